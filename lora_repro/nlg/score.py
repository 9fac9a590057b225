"""`lora-repro score`: score your own NLG outputs with the same metrics as `generate`.

References, one of:
- a text file in e2e-metrics' layout: the references of an input on consecutive lines, a blank line
  between inputs (what `generate` writes as `<split>.ref.txt`);
- an E2E CSV with `mr,ref` columns (references grouped by identical MR, in order of first appearance);
- several files given as `--refs f0 --refs f1 ...`, line i of file j = j-th reference of input i
  (GenerationEval's reference0, reference1, ... layout; empty lines are missing references);
- a `generate` predictions file (`.jsonl` with a `references` list per line).
Hypotheses: a text file with one output per line (in the references' input order).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from lora_repro.errors import ConfigError


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise ConfigError(f"file {path} does not exist")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start : exc.start + 1]!r}); "
            "valid: UTF-8 files"
        ) from None


def read_lines(path: Path) -> list[str]:
    """One entry per line; a final newline ends the last line rather than starting an empty one,
    so an empty last hypothesis ("...\n\n") stays a hypothesis."""
    text = _read_text(path)
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def read_reference_groups(paths: list[Path]) -> list[list[str]]:
    """Reference groups (one list per input) from any of the layouts in the module docstring."""
    if len(paths) > 1:
        columns = [_read_text(p).rstrip("\n").split("\n") for p in paths]
        if len({len(c) for c in columns}) != 1:
            raise ConfigError(
                f"reference files have different line counts: {[len(c) for c in columns]}"
            )
        return [[r.strip() for r in row if r.strip()] for row in zip(*columns, strict=True)]
    path = paths[0]
    text = _read_text(path)
    if path.suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        if not rows or not {"mr", "ref"} <= set(rows[0]):
            raise ConfigError(f"{path}: a reference CSV needs columns 'mr' and 'ref'")
        groups: dict[str, list[str]] = {}
        for row in rows:
            groups.setdefault(row["mr"], []).append(row["ref"].strip())
        return list(groups.values())
    if path.suffix == ".jsonl":
        try:
            return [json.loads(line)["references"] for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: expected one JSON object with 'references' per line ({exc!r})"
            ) from None
    blocks = [b for b in text.strip("\n").split("\n\n")]
    return [[r.strip() for r in b.split("\n") if r.strip()] for b in blocks]


def cmd_score(argv: list[str]) -> int:
    """Score hypotheses against references: lora-repro score --task e2e --refs R --hyps H."""
    from lora_repro.metrics.nlg import score_task

    ap = argparse.ArgumentParser(
        prog="lora-repro score",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--task", required=True, choices=("e2e", "webnlg", "dart"))
    ap.add_argument("--refs", required=True, action="append", help="reference file (repeatable)")
    ap.add_argument("--hyps", required=True, help="one hypothesis per line")
    ap.add_argument("--metrics", help="comma-separated subset (default: all of the task's)")
    ap.add_argument("--out", help="also write the scores to this JSON file")
    args = ap.parse_args(argv)

    refs = read_reference_groups([Path(p) for p in args.refs])
    hyps = read_lines(Path(args.hyps))
    if len(hyps) != len(refs):
        raise ConfigError(f"{len(hyps)} hypotheses in {args.hyps} but {len(refs)} reference groups")
    empty = [i + 1 for i, g in enumerate(refs) if not g]
    if empty:
        raise ConfigError(f"input(s) {empty[:5]} have no reference")
    try:
        scores = score_task(
            args.task, hyps, refs, metrics=args.metrics.split(",") if args.metrics else None
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    text = json.dumps(scores)
    if args.out:
        from lora_repro.atomic import write_atomic

        write_atomic(Path(args.out), text + "\n")
    print(text)
    return 0
