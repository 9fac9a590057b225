"""Where E2E, WebNLG 2017 and DART come from and how one input is written as text (§5.4; the released
LoRA code's `format_converting_{e2e,webnlg,dart}.py`): readers for the released files and the hub
copies, the linearisation, and the grouping of references per input."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_repro.errors import ConfigError, check_choice

TASKS = ("e2e", "webnlg", "dart")

# Default file names inside `task.data_dir` (the released code's data/ layout; `task.files` overrides).
DEFAULT_FILES = {
    "e2e": {"train": "train.txt", "validation": "valid.txt", "test": "test.txt"},
    "webnlg": {"train": "train.json", "validation": "dev.json", "test": "test.json"},
    "dart": {
        "train": "dart-v1.1.1-full-train.json",
        "validation": "dart-v1.1.1-full-dev.json",
        "test": "dart-v1.1.1-full-test.json",
    },
}
# Hub copies (parquet conversions of the script datasets). WebNLG's hub copy mixes other test sets into
# its test split and has a different layout, so WebNLG is read from the released JSON files only.
HUB = {"e2e": "tuetschek/e2e_nlg", "dart": "Yale-LILY/dart"}
HUB_REVISION = "refs/convert/parquet"

# E2E slot names as the released data writes them (checked against devset.csv vs valid.txt).
E2E_SLOT_NAMES = {"eatType": "Type", "familyFriendly": "family friendly", "priceRange": "price"}
# WebNLG 2017's ten training categories; the test set's other five are "unseen" (Table 4's U column).
WEBNLG_SEEN = (
    "Airport",
    "Astronaut",
    "Building",
    "City",
    "ComicsCharacter",
    "Food",
    "Monument",
    "SportsTeam",
    "University",
    "WrittenWork",
)


@dataclass
class Pair:
    """One (input, reference) pair; `meta` travels with the input (WebNLG category)."""

    context: str
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- readers


def linearize_e2e_mr(mr: str, where: str = "E2E MR") -> str:
    """`name[Alimentum], eatType[pub]` (original CSV) -> `name : Alimentum | Type : pub`."""
    slots = re.findall(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*,?", mr)
    if not slots or re.sub(r"\s*[^\[\],]+?\s*\[[^\]]*\]\s*,?", "", mr).strip():
        raise ConfigError(
            f"{where}: cannot parse meaning representation {mr!r}; expected slot[value], ..."
        )
    return " | ".join(f"{E2E_SLOT_NAMES.get(k, k)} : {v}" for k, v in slots)


def linearize_triples(triples: list[tuple[str, str, str]]) -> str:
    """[(s, p, o), ...] -> `s : p : o | s : p : o` (format_converting_webnlg/dart.py)."""
    return " | ".join(f"{s} : {p} : {o}" for s, p, o in triples)


def read_e2e(path: Path) -> list[Pair]:
    """E2E in the released code's `MR||reference` text format (.txt) or the original CSV (mr,ref)."""
    if path.suffix == ".txt":
        pairs = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if "||" not in line:
                raise ConfigError(f"{path}:{n}: expected 'MR||reference', got {line[:60]!r}")
            mr, ref = line.split("||", 1)
            pairs.append(Pair(mr.strip(), ref.strip()))
    elif path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "mr" not in header or "ref" not in header:
            raise ConfigError(f"{path}: E2E CSV needs columns 'mr' and 'ref', found {header}")
        i, j = header.index("mr"), header.index("ref")
        pairs = []
        for n, row in enumerate(rows[1:], 2):
            if len(row) != len(header):
                raise ConfigError(f"{path}:{n}: {len(row)} columns, the header has {len(header)}")
            pairs.append(Pair(linearize_e2e_mr(row[i], f"{path}:{n}"), row[j].strip()))
    else:
        raise ConfigError(f"{path}: unknown E2E file type {path.suffix!r}; valid: .txt, .csv")
    return pairs


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def read_webnlg(path: Path) -> list[Pair]:
    """WebNLG 2017 JSON (`{"entries": [{"1": {category, lexicalisations, modifiedtripleset}}]}`);
    only lexicalisations marked `good` are kept, as the released converter does."""
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ConfigError(f"{path}: WebNLG JSON needs a top-level 'entries' list")
    pairs = []
    for n, wrapper in enumerate(data["entries"], 1):
        try:
            (entry,) = wrapper.values()
            triples = [
                (t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]
            ]
            category = entry["category"]
            lexes = [lex["lex"] for lex in entry["lexicalisations"] if lex.get("comment") == "good"]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: entry {n} is not a WebNLG entry ({exc!r})") from None
        meta = {"category": category, "seen": category in WEBNLG_SEEN}
        pairs += [Pair(linearize_triples(triples), lex.strip(), meta) for lex in lexes]
    return pairs


def _dart_pairs(tripleset: list, texts: list[str], where: str) -> list[Pair]:
    try:
        triples = [(s, p.lower(), o) for s, p, o in tripleset]
    except (TypeError, ValueError, AttributeError):
        raise ConfigError(
            f"{where}: tripleset must be [[subject, property, object], ...]"
        ) from None
    return [Pair(linearize_triples(triples), t.strip()) for t in texts]


def read_dart(path: Path) -> list[Pair]:
    """DART JSON: a list of {tripleset: [[s, p, o], ...], annotations: [{source, text}, ...]}."""
    data = _load_json(path)
    if not isinstance(data, list):
        raise ConfigError(f"{path}: DART JSON must be a list of {{tripleset, annotations}} entries")
    pairs = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, dict) or "tripleset" not in entry or "annotations" not in entry:
            raise ConfigError(f"{path}: entry {n} lacks 'tripleset' or 'annotations'")
        texts = [a["text"] for a in entry["annotations"]]
        pairs += _dart_pairs(entry["tripleset"], texts, f"{path}: entry {n}")
    return pairs


READERS: dict[str, Callable[[Path], list[Pair]]] = {
    "e2e": read_e2e,
    "webnlg": read_webnlg,
    "dart": read_dart,
}


def _hub_pairs(task: str, split: str) -> list[Pair]:
    """The same pairs from the hub's parquet copy (needs network or a warm datasets cache)."""
    if task not in HUB:
        raise ConfigError(f"task {task!r} has no hub source; use source=local (hub: {sorted(HUB)})")
    import datasets

    try:
        rows = datasets.load_dataset(HUB[task], split=split, revision=HUB_REVISION)
    except Exception as exc:  # network, missing split: one line, not a traceback
        raise ConfigError(f"cannot load {HUB[task]} split {split!r} from the hub: {exc}") from None
    if task == "e2e":
        where = f"{HUB[task]}:{split}"
        return [
            Pair(linearize_e2e_mr(r["meaning_representation"], where), r["human_reference"].strip())
            for r in rows
        ]
    pairs = []
    for n, r in enumerate(rows):
        pairs += _dart_pairs(r["tripleset"], r["annotations"]["text"], f"{HUB[task]}:{split}:{n}")
    return pairs


def split_path(cfg: Any, split: str) -> Path:
    """Where a split's file is: `task.files[split]` (absolute, or relative to data_dir) or the default."""
    files = {**DEFAULT_FILES[cfg.name], **(getattr(cfg, "files", None) or {})}
    check_choice(f"{cfg.name} split", split, sorted(files))
    path = Path(files[split])
    if not path.is_absolute():
        if not cfg.data_dir:
            raise ConfigError(f"task {cfg.name!r} with source=local needs task.data_dir")
        path = Path(cfg.data_dir) / path
    return path


def has_split(cfg: Any, split: str) -> bool:
    return cfg.source == "hub" or split_path(cfg, split).is_file()


def load_pairs(cfg: Any, split: str) -> list[Pair]:
    """All (input, reference) pairs of one split, linearised."""
    check_choice("nlg task", cfg.name, TASKS)
    if cfg.source == "hub":
        pairs = _hub_pairs(cfg.name, split)
    else:
        path = split_path(cfg, split)
        if not path.is_file():
            raise ConfigError(f"{cfg.name} {split} file {path} does not exist (set task.data_dir)")
        pairs = READERS[cfg.name](path)
    if not pairs:
        raise ConfigError(f"{cfg.name} {split}: no examples read")
    return pairs


def group_references(pairs: list[Pair]) -> list[dict[str, Any]]:
    """One entry per unique context (first-appearance order) with all its references."""
    groups: dict[str, dict[str, Any]] = {}
    for p in pairs:
        g = groups.setdefault(p.context, {"context": p.context, "references": [], **p.meta})
        g["references"].append(p.completion)
    return list(groups.values())
