"""The eight GLUE tasks of the paper's Table 2, read from the hub or from GLUE's own TSV files.

`build(cfg, tokenizer) -> TaskData`. The hub's copy was made from the same GLUE files (its MRPC
train holds 3,668 rows rebuilt from the MSR corpus where GLUE's train.tsv has 3,667, so seeded subsets
of MRPC differ between sources). Both sources are encoded the same way: one sentence or a sentence pair,
truncated longest-first to `max_length` (as run_glue does), padded per batch to the longest example.
Label ids follow the hub's order, so a model trained on one source scores on the other.
Eval splits are named `dev` (`dev_matched`, `dev_mismatched` for MNLI); metric keys are
`<split>/<metric>` and `TaskData.primary_metric` is one of them (Table 2's number).
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_repro.config import TaskConfig
from lora_repro.data import TaskData
from lora_repro.data.cache import encode_cached
from lora_repro.data.encoding import Encoded, PadCollate
from lora_repro.errors import ConfigError, check_choice
from lora_repro.metrics.glue import Scorer

log = logging.getLogger(__name__)

VERSION = "1"  # bump whenever reading, encoding or scoring changes; recorded in every result
TRAIN_SUBSET_SEED = 1234  # train_limit draws with this fixed seed (recorded in TaskData.version)
HUB_DATASET = "nyu-mll/glue"
STSB_RANGE = (0.0, 5.0)
DEV = {"dev": ("dev", "validation")}  # our split name -> (TSV file stem, hub split)


@dataclass(frozen=True)
class GlueTask:
    hub_name: str  # config name of nyu-mll/glue
    dir_name: str  # folder written by download_glue_data.py
    text: tuple[str, ...]  # hub columns of the input (one sentence or a pair)
    local_text: tuple[str | int, ...]  # the same in the TSV (ints: column positions, no header)
    local_label: str | int
    labels: tuple[str, ...]  # class names in the hub's id order; () = regression (STS-B)
    local_values: tuple[str, ...]  # how the TSV writes class 0, 1, ...
    metrics: tuple[str, ...]  # lora_repro.metrics.glue names, computed on every eval split
    primary: str  # "<eval split>/<metric>": the number Table 2 reports
    evals: Mapping[str, tuple[str, str]] = field(default_factory=lambda: DEV)
    skip_malformed: bool = False  # drop rows with a wrong field count (warning), don't fail
    columns: int = 0  # headerless TSV only: its exact field count

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1  # one output for regression


_NLI3 = ("entailment", "neutral", "contradiction")
_NLI2 = ("entailment", "not_entailment")
# Table 2 reports MNLI matched accuracy, CoLA Matthews correlation, STS-B Pearson, accuracy elsewhere.
GLUE_TASKS: dict[str, GlueTask] = {
    "mnli": GlueTask(
        "mnli", "MNLI", ("premise", "hypothesis"), ("sentence1", "sentence2"), "gold_label",
        _NLI3, _NLI3, ("accuracy",), "dev_matched/accuracy",
        evals={
            "dev_matched": ("dev_matched", "validation_matched"),
            "dev_mismatched": ("dev_mismatched", "validation_mismatched"),
        },
    ),
    "sst2": GlueTask(
        "sst2", "SST-2", ("sentence",), ("sentence",), "label",
        ("negative", "positive"), ("0", "1"), ("accuracy",), "dev/accuracy",
    ),
    "mrpc": GlueTask(
        "mrpc", "MRPC", ("sentence1", "sentence2"), ("#1 String", "#2 String"), "Quality",
        ("not_equivalent", "equivalent"), ("0", "1"), ("accuracy", "f1"), "dev/accuracy",
    ),
    # CoLA's TSV has no header: source, label, original mark, sentence.
    "cola": GlueTask(
        "cola", "CoLA", ("sentence",), (3,), 1,
        ("unacceptable", "acceptable"), ("0", "1"), ("matthews",), "dev/matthews", columns=4,
    ),
    "qnli": GlueTask(
        "qnli", "QNLI", ("question", "sentence"), ("question", "sentence"), "label",
        _NLI2, _NLI2, ("accuracy",), "dev/accuracy",
    ),
    # A few rows of some QQP releases are broken; run_glue's processor skips them, so do we.
    "qqp": GlueTask(
        "qqp", "QQP", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
        ("not_duplicate", "duplicate"), ("0", "1"), ("accuracy", "f1"), "dev/accuracy",
        skip_malformed=True,
    ),
    "rte": GlueTask(
        "rte", "RTE", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label",
        _NLI2, _NLI2, ("accuracy",), "dev/accuracy",
    ),
    "stsb": GlueTask(
        "stsb", "STS-B", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score",
        (), (), ("pearson", "spearman"), "dev/pearson",
    ),
}  # fmt: skip

Row = tuple[tuple[str, ...], int | float]  # (texts, label)


def get_task(name: str) -> GlueTask:
    check_choice("GLUE task", name, tuple(GLUE_TASKS))
    return GLUE_TASKS[name]


def _label(task: GlueTask, raw: str, where: str) -> int | float:
    """A TSV label as the hub writes it: class id, or the STS-B score checked against its 0-5 range."""
    if not task.labels:
        try:
            score = float(raw)
        except ValueError:
            score = float("nan")
        if not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise ConfigError(f"{where}: score {raw!r} is not a number in {list(STSB_RANGE)}")
        return score
    if raw not in task.local_values:
        raise ConfigError(f"{where}: label {raw!r} is not one of {list(task.local_values)}")
    return task.local_values.index(raw)


def read_tsv(task: GlueTask, path: Path) -> list[Row]:
    """Rows of one GLUE TSV file. Tab-separated, no quoting (sentences hold raw `"`); MRPC's files
    start with a byte-order mark, which utf-8-sig drops."""
    if not path.is_file():
        raise ConfigError(
            f"GLUE file {path} does not exist (expected the download_glue_data.py layout)"
        )
    with path.open(encoding="utf-8-sig", newline="") as f:
        lines = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines:
        raise ConfigError(f"GLUE file {path} is empty")
    if isinstance(task.local_label, int):  # headerless (CoLA): fixed positions
        width, positions = task.columns, [*task.local_text, task.local_label]
        body_start = 0
    else:
        header = lines[0]
        needed = [*task.local_text, task.local_label]
        missing = [c for c in needed if c not in header]
        if missing:
            raise ConfigError(
                f"{path}: missing column(s) {missing} for GLUE {task.hub_name}; "
                f"need {needed}, found {header}"
            )
        width, positions, body_start = len(header), [header.index(c) for c in needed], 1
    rows: list[Row] = []
    skipped = 0
    for number, line in enumerate(lines[body_start:], start=body_start + 1):
        if len(line) != width:
            if task.skip_malformed:
                skipped += 1
                continue
            raise ConfigError(
                f"{path}:{number}: {len(line)} tab-separated fields, expected {width} "
                f"(the GLUE {task.hub_name} layout)"
            )
        *texts, raw = (line[i] for i in positions)
        rows.append((tuple(texts), _label(task, raw, f"{path}:{number}")))
    if skipped:
        log.warning("%s: skipped %d malformed row(s), as run_glue does", path, skipped)
    if not rows:
        raise ConfigError(f"GLUE file {path} has no examples")
    return rows


def _local_splits(task: GlueTask, cfg: TaskConfig) -> dict[str, list[Row]]:
    if not cfg.data_dir:
        raise ConfigError(
            f"task.data_dir is required with task.source=local (a GLUE {task.dir_name} folder)"
        )
    root = Path(cfg.data_dir).expanduser()
    if not root.is_dir():
        files = ", ".join(f"{stem}.tsv" for stem in ["train", *(s for s, _ in task.evals.values())])
        raise ConfigError(
            f"task.data_dir {str(root)!r} is not a directory; expected one holding {files}"
        )
    stems = {"train": "train", **{name: stem for name, (stem, _) in task.evals.items()}}
    return {name: read_tsv(task, root / f"{stem}.tsv") for name, stem in stems.items()}


def split_files(cfg: TaskConfig) -> list[Path]:
    """The TSV files a local GLUE task reads (for the data fingerprint); none when not local."""
    if cfg.source != "local" or not cfg.data_dir or cfg.name not in GLUE_TASKS:
        return []
    task = get_task(cfg.name)
    stems = ["train", *(stem for stem, _ in task.evals.values())]
    return [Path(cfg.data_dir).expanduser() / f"{stem}.tsv" for stem in stems]


def _hub_splits(task: GlueTask) -> dict[str, list[Row]]:
    import datasets  # imported here: slow to import, and only this source needs it

    try:
        ds = datasets.load_dataset(HUB_DATASET, task.hub_name)
    except Exception as exc:  # offline, unknown config, ...: one line that says what to do instead
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot load {HUB_DATASET}/{task.hub_name} from the hub ({first}); "
            f"use task.source=local with task.data_dir"
        ) from None
    splits = {"train": "train", **{name: hub for name, (_, hub) in task.evals.items()}}
    out: dict[str, list[Row]] = {}
    for name, hub_split in splits.items():
        if hub_split not in ds:
            raise ConfigError(
                f"{HUB_DATASET}/{task.hub_name} has no split {hub_split!r}; found {list(ds)}"
            )
        split = ds[hub_split]
        missing = [c for c in (*task.text, "label") if c not in split.column_names]
        if missing:
            raise ConfigError(
                f"{HUB_DATASET}/{task.hub_name}[{hub_split}] lacks column(s) {missing}; "
                f"found {split.column_names}"
            )
        texts = list(zip(*(split[c] for c in task.text), strict=True))
        rows = []
        for i, (t, label) in enumerate(zip(texts, split["label"], strict=True)):
            where = f"{HUB_DATASET}/{task.hub_name}[{hub_split}] row {i}"
            if not task.labels:
                label = _label(task, str(label), where)
            elif label not in range(task.num_labels):  # -1 marks the unlabelled test splits
                raise ConfigError(f"{where}: label {label!r} is not a class id of {task.labels}")
            rows.append((tuple(t), label))
        if not rows:
            raise ConfigError(f"{HUB_DATASET}/{task.hub_name}[{hub_split}] has no examples")
        out[name] = rows
    return out


def subset(rows: list[Row], limit: int | None, seed: int = TRAIN_SUBSET_SEED) -> list[Row]:
    """A seeded random subset of `limit` rows, kept in file order; all rows when limit is None or larger."""
    if limit is None or limit >= len(rows):
        return rows
    keep = sorted(random.Random(seed).sample(range(len(rows)), limit))
    return [rows[i] for i in keep]


def build(cfg: TaskConfig, tokenizer: Any) -> TaskData:
    """Read, subset and tokenise one GLUE task for the trainer."""
    task = get_task(cfg.name)
    splits = _hub_splits(task) if cfg.source == "hub" else _local_splits(task, cfg)
    train = subset(splits.pop("train"), cfg.train_limit)
    evals = {
        name: rows[: cfg.eval_limit] if cfg.eval_limit else rows for name, rows in splits.items()
    }
    version = VERSION if cfg.train_limit is None else f"{VERSION}+subset-seed{TRAIN_SUBSET_SEED}"
    log.info(
        "GLUE %s (%s): train %d, %s", cfg.name, cfg.source, len(train),
        ", ".join(f"{k} {len(v)}" for k, v in evals.items()),
    )  # fmt: skip
    regression = not task.labels

    def enc(rows: list[Row], split: str) -> Encoded:
        name = f"glue-{cfg.name}-{split}-len{cfg.max_length}"
        return encode_cached(rows, tokenizer, cfg.max_length, regression, name)

    return TaskData(
        name=cfg.name,
        version=f"glue-{cfg.name}-{version}",
        head="classification",
        num_labels=task.num_labels,
        primary_metric=task.primary,
        train=enc(train, "train"),
        evals={name: enc(rows, name) for name, rows in evals.items()},
        collate=PadCollate(tokenizer, regression),
        metrics=Scorer(task.metrics),
    )


__all__ = ["GLUE_TASKS", "Encoded", "GlueTask", "build", "get_task", "read_tsv", "subset"]
