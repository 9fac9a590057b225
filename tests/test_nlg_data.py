"""E2E / WebNLG / DART reading, linearisation, encoding and bad-input errors (lora_repro.data.nlg)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_repro.config import TaskConfig
from lora_repro.data import nlg
from lora_repro.errors import ConfigError

FIX = Path(__file__).parent / "fixtures" / "nlg"


def task(name: str, **kw) -> TaskConfig:
    files = {
        "e2e": {"train": "valid.txt", "validation": "valid.txt", "test": "test.txt"},
        "webnlg": {
            "train": "synthetic.json",
            "validation": "synthetic.json",
            "test": "synthetic.json",
        },
        "dart": {
            "train": "synthetic.json",
            "validation": "synthetic.json",
            "test": "synthetic.json",
        },
    }[name]
    base = {
        "name": name,
        "kind": "nlg",
        "data_dir": str(FIX / name),
        "files": files,
        "max_length": 512,
    }
    return TaskConfig(**{**base, **kw})


class CharTokenizer:
    """A stand-in tokenizer with GPT-2's shape: one id per character, eos only (no pad, no sep)."""

    eos_token_id = 0
    pad_token_id = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [ord(c) for c in text]}


def test_e2e_text_and_csv_give_the_same_inputs() -> None:
    txt = nlg.read_e2e(FIX / "e2e" / "valid.txt")
    csv = nlg.read_e2e(FIX / "e2e" / "devset.csv")
    assert len(txt) == len(csv) == 400
    assert txt[0].context == "name : Alimentum | area : city centre | family friendly : no"
    assert csv[0].context == txt[0].context  # eatType -> Type, familyFriendly -> family friendly
    # the released text files are tokenised ("£ 20 - 25", "family - friendly"); the CSV is not
    for a, b in zip(txt, csv, strict=True):
        assert a.context.replace(" ", "") == b.context.replace(" ", "")
        assert a.completion.replace(" ", "") == b.completion.replace(" ", "")


def test_e2e_mr_linearisation() -> None:
    mr = "name[The Eagle], eatType[coffee shop], priceRange[£20-25], customer rating[3 out of 5]"
    want = "name : The Eagle | Type : coffee shop | price : £20-25 | customer rating : 3 out of 5"
    assert nlg.linearize_e2e_mr(mr) == want
    with pytest.raises(ConfigError, match="cannot parse"):
        nlg.linearize_e2e_mr("name: The Eagle")


def test_references_grouped_per_input() -> None:
    groups = nlg.group_references(nlg.read_e2e(FIX / "e2e" / "valid.txt"))
    assert len(groups) == 46  # unique MRs in the fixture (SOURCES.md)
    assert sum(len(g["references"]) for g in groups) == 400
    first = [
        line.split("||")[1].strip()
        for line in (FIX / "e2e" / "valid.txt").read_text().splitlines()[:6]
    ]
    assert groups[0]["references"] == first  # the first MR has six references


def test_webnlg_triples_good_lexicalisations_and_seen() -> None:
    pairs = nlg.read_webnlg(FIX / "webnlg" / "synthetic.json")
    assert all("bad" not in p.completion for p in pairs)  # only comment == "good"
    assert len(pairs) == 9
    two = next(p for p in pairs if p.context.startswith("Alder_Field_Airport : runwayLength"))
    assert two.context == (
        "Alder_Field_Airport : runwayLength : 1820.0 | "
        "Alder_Field_Airport : elevationAboveTheSeaLevel_(in_metres) : 41"
    )
    groups = nlg.group_references(pairs)
    assert [g["seen"] for g in groups] == [True, True, True, False, False, True]
    assert [g["category"] for g in groups][3:5] == ["Politician", "Artist"]


def test_dart_lowercases_properties() -> None:
    pairs = nlg.read_dart(FIX / "dart" / "synthetic.json")
    assert pairs[0].context == "Copper Lane : located_in : Westford | Copper Lane : length : 2 km"
    assert len(nlg.group_references(pairs)) == 3 and len(pairs) == 5


def test_encoding_masks_the_context() -> None:
    tok = CharTokenizer()
    ex, cut = nlg.encode_pair(tok, nlg.Pair("a : b", "Hi ."), max_length=64)
    ctx = [ord(c) for c in "a : b"] + [0]
    comp = [ord(c) for c in " Hi ."] + [0]  # the leading space: GPT-2's BPE sees " Hi" as one word
    assert ex["input_ids"] == ctx + comp and not cut
    assert ex["labels"] == [-100] * len(ctx) + comp
    ex, cut = nlg.encode_pair(tok, nlg.Pair("a : b", "Hi ."), max_length=8)
    assert cut and ex["input_ids"] == (ctx + comp)[:8] and ex["labels"][:6] == [-100] * 6
    with pytest.raises(ConfigError, match="does not fit"):
        nlg.encode_pair(tok, nlg.Pair("a long context", "x"), max_length=5)


def test_collate_pads_right_with_ignored_labels() -> None:
    batch = nlg.make_collate(7)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


@pytest.mark.parametrize("name", ["e2e", "webnlg", "dart"])
def test_build_and_generation_set(name: str) -> None:
    cfg = task(name, eval_limit=3)
    data = nlg.build(cfg, CharTokenizer())
    assert data.head == "lm" and data.name == name and len(data.evals["validation"]) == 3
    for ex in data.train:
        n_ctx = ex["labels"].count(-100)
        assert ex["labels"][n_ctx:] == ex["input_ids"][n_ctx:] and ex["input_ids"][n_ctx - 1] == 0
    gen = nlg.generation_set(cfg, CharTokenizer(), "test")
    assert len(gen) == 3 and all(g["input_ids"][-1] == 0 and g["references"] for g in gen)


def test_train_limit_is_a_fixed_subset() -> None:
    a = nlg.build(task("e2e", train_limit=20), CharTokenizer()).train
    b = nlg.build(task("e2e", train_limit=20), CharTokenizer()).train
    assert len(a) == 20 and a == b


def test_eos_falls_back_to_sep() -> None:
    class Wordpiece:
        eos_token_id, sep_token_id = None, 102

    class Nothing:
        eos_token_id = sep_token_id = None

    assert nlg.eos_token_id(Wordpiece()) == 102
    with pytest.raises(ConfigError, match="neither an eos_token nor a sep_token"):
        nlg.eos_token_id(Nothing())


@pytest.mark.parametrize(
    ("name", "file", "content", "message"),
    [
        (
            "e2e",
            "bad.txt",
            "name : X | area : riverside  There is no separator\n",
            "expected 'MR||reference'",
        ),
        ("e2e", "bad.csv", "meaning,text\nname[X],Hello\n", "needs columns 'mr' and 'ref'"),
        ("e2e", "bad.csv", 'mr,ref\n"name[X], area[riverside]",Hello,extra\n', "3 columns"),
        ("e2e", "bad.csv", 'mr,ref\n"name X",Hello\n', "cannot parse meaning representation"),
        ("e2e", "bad.tsv", "x\ty\n", "unknown E2E file type '.tsv'"),
        ("e2e", "empty.txt", "\n", "no examples read"),
        ("webnlg", "bad.json", '{"entries": [', "not valid JSON"),
        ("webnlg", "bad.json", '{"benchmark": []}', "top-level 'entries' list"),
        (
            "webnlg",
            "bad.json",
            '{"entries": [{"1": {"category": "City"}}]}',
            "entry 1 is not a WebNLG entry",
        ),
        ("dart", "bad.json", '{"tripleset": []}', "must be a list"),
        (
            "dart",
            "bad.json",
            '[{"tripleset": [["a", "b"]], "annotations": []}]',
            "tripleset must be",
        ),
        ("dart", "bad.json", '[{"annotations": []}]', "lacks 'tripleset'"),
    ],
)
def test_bad_files_give_clear_errors(
    tmp_path: Path, name: str, file: str, content: str, message: str
) -> None:
    (tmp_path / file).write_text(content, encoding="utf-8")
    cfg = TaskConfig(name=name, kind="nlg", data_dir=str(tmp_path), files={"train": file})
    with pytest.raises(ConfigError, match=message):
        nlg.load_pairs(cfg, "train")


def test_missing_file_and_dir() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        nlg.load_pairs(TaskConfig(name="e2e", kind="nlg", data_dir="/nonexistent"), "train")
    with pytest.raises(ConfigError, match=r"needs task\.data_dir"):
        nlg.load_pairs(TaskConfig(name="dart", kind="nlg"), "test")
    with pytest.raises(ConfigError, match="unknown e2e split 'dev'"):
        nlg.load_pairs(task("e2e"), "dev")


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub path maps the hub's columns onto the same pairs (the hub itself is offline here)."""
    import datasets

    rows = {
        "tuetschek/e2e_nlg": [
            {"meaning_representation": "name[X], eatType[pub]", "human_reference": "X is a pub."}
        ],
        "Yale-LILY/dart": [
            {
                "tripleset": [["A", "LOCATED_IN", "B"]],
                "annotations": {"source": ["s", "s"], "text": ["A is in B.", "B has A."]},
            }
        ],
    }
    calls = []

    def fake_load(name: str, split: str, revision: str):
        calls.append((name, split, revision))
        return rows[name]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    e2e = nlg.load_pairs(TaskConfig(name="e2e", kind="nlg", source="hub"), "validation")
    dart = nlg.load_pairs(TaskConfig(name="dart", kind="nlg", source="hub"), "test")
    assert (e2e[0].context, e2e[0].completion) == ("name : X | Type : pub", "X is a pub.")
    assert [p.completion for p in dart] == ["A is in B.", "B has A."] and dart[
        0
    ].context == "A : located_in : B"
    assert calls == [
        ("tuetschek/e2e_nlg", "validation", "refs/convert/parquet"),
        ("Yale-LILY/dart", "test", "refs/convert/parquet"),
    ]
    with pytest.raises(ConfigError, match="has no hub source"):
        nlg.load_pairs(TaskConfig(name="webnlg", kind="nlg", source="hub"), "test")


def test_task_configs_compose() -> None:
    from omegaconf import OmegaConf

    from lora_repro.compose import compose
    from lora_repro.config import RunConfig

    want = {"e2e": (0.1, 0.9), "webnlg": (0.1, 0.8), "dart": (0.0, 0.8)}  # Table 11
    for name, (smoothing, lp) in want.items():
        raw = OmegaConf.to_container(compose([f"task={name}", "model=gpt2-medium"]), resolve=True)
        cfg = RunConfig.from_dict(raw)
        assert raw["head"] == "lm"
        assert (cfg.task.label_smoothing, cfg.task.length_penalty) == (smoothing, lp)
        assert (cfg.task.beam_size, cfg.task.no_repeat_ngram_size) == (10, 4)


def test_fixture_json_is_the_real_layout() -> None:
    entry = json.loads((FIX / "webnlg" / "synthetic.json").read_text())["entries"][0]["1"]
    assert {"category", "lexicalisations", "modifiedtripleset", "originaltriplesets"} <= set(entry)


def test_validation_holdout_splits_by_input_and_is_seeded() -> None:
    """Offline E2E has no train split: a seeded set of inputs (MRs), with every reference, becomes the
    validation split, so no MR is in both; the rest trains."""
    from lora_repro.data.nlg import holdout_by_mr
    from lora_repro.data.nlg_sources import Pair
    from lora_repro.errors import ConfigError

    pairs = [Pair(f"mr{i}", f"ref{i}.{k}") for i in range(20) for k in range(i % 3 + 1)]
    train, val = holdout_by_mr(pairs, 5)
    assert {p.context for p in val}.isdisjoint({p.context for p in train})
    assert len({p.context for p in val}) == 5 and len(train) + len(val) == len(pairs)
    assert all(sum(q.context == p.context for q in val) == int(p.context[2:]) % 3 + 1 for p in val)
    assert holdout_by_mr(pairs, 5) == (train, val)  # seeded: every run validates on the same MRs
    with pytest.raises(ConfigError, match=r"task.validation_holdout=20; valid: 1..19"):
        holdout_by_mr(pairs, 20)
