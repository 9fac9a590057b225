"""`collect`: every run record of an experiment (runs/<experiment>/**/result.json) into one sorted,
diffable results/<experiment>.jsonl, which tables, reports and sweeps (sweep.reusable) read without
the run folders."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from lora_repro.atomic import write_atomic
from lora_repro.errors import ConfigError
from lora_repro.record import environment_label, read_json

log = logging.getLogger(__name__)


def _key(rec: dict[str, Any]) -> tuple[str, str]:
    return (str((rec.get("run") or {}).get("id")), str(rec.get("config_hash")))


def collect(experiment: str, runs_dir: str | Path = "runs", results_dir: str | Path = "results",
            fresh: bool = False) -> tuple[Path, Counter, Counter]:  # fmt: skip
    """Copy every runs/<experiment>/**/result.json into results/<experiment>.jsonl, one record a line
    (keys sorted, lines sorted by run id): a diffable file tables rebuild from without the cluster.
    Records already in the file whose runs are not under runs_dir (collected on another machine) are
    kept unless `fresh`; a run found again replaces its old line. Returns the file, the records per
    status and the records per environment (torch/transformers versions)."""
    root = Path(runs_dir) / experiment
    if not root.is_dir():
        raise ConfigError(f"no run folders under {str(root)!r} (experiment {experiment!r})")
    found = {}
    for path in sorted(root.rglob("result.json")):
        rec = read_json(path)
        if rec is None:
            log.warning("skipping unreadable %s", path)
            continue
        found[_key(rec)] = rec
    out = Path(results_dir) / f"{experiment}.jsonl"
    old = (
        {}
        if fresh or not out.is_file()
        else {_key(r): r for r in map(json.loads, jsonl_lines(out))}
    )
    kept = {k: r for k, r in old.items() if k not in found}
    merged = {**kept, **found}
    text = "".join(
        json.dumps(merged[k], sort_keys=True, default=str) + "\n" for k in sorted(merged)
    )
    write_atomic(out, text)
    counts = Counter(r.get("status", "?") for r in merged.values())
    counts["kept from before"] = len(kept)
    return out, counts, Counter(environment_label(r) for r in merged.values())


def jsonl_lines(path: Path) -> list[str]:
    """The non-blank lines of a results/<experiment>.jsonl file."""
    return [line for line in path.read_text().splitlines() if line.strip()]


def collect_main(argv: list[str]) -> int:
    """`lora-repro collect EXPERIMENT [--runs-dir runs] [--results-dir results] [--fresh]`."""
    import argparse

    p = argparse.ArgumentParser(
        prog="lora-repro collect",
        description="Gather runs/<experiment>/**/result.json into results/<experiment>.jsonl "
        "(sorted, diffable; records collected elsewhere are kept unless --fresh).",
    )
    p.add_argument("experiment")
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--fresh", action="store_true", help="drop records not found under --runs-dir")
    args = p.parse_args(argv)
    out, counts, envs = collect(args.experiment, args.runs_dir, args.results_dir, args.fresh)
    kept = counts.pop("kept from before")
    status = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    print(f"{out}: {sum(counts.values())} records ({status or 'none'})"
          + (f"; {kept} kept from an earlier collect" if kept else ""))  # fmt: skip
    if envs:
        mixed = "MIXED environments: " if len(envs) > 1 else "environment: "
        print(mixed + "; ".join(f"{e} ({n} runs)" for e, n in envs.most_common()))
    return 0
