"""Learning curves from runs' history.jsonl, or from the `curve` their records carry (so a study's
committed results/*.jsonl rebuild them without the run folders): every evaluation's metric by epoch,
one line per run, so a study can show that its budget let the dev metric plateau (issue #18)."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pandas as pd

from lora_repro.analysis.outputs import write_csv, write_figure
from lora_repro.errors import ConfigError


def history(run: Path) -> pd.DataFrame:
    """The evaluation rows of one run: epoch, step, and every `<split>/<metric>` column."""
    path = run / "history.jsonl"
    if not path.is_file():
        raise ConfigError(f"{run} has no history.jsonl; valid: a run folder written by `train`")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    evals = [r for r in rows if r.get("event") == "eval"]
    if not evals:
        raise ConfigError(f"{path} holds no evaluation yet")
    return pd.DataFrame(evals)


def primary(run: Path) -> str:
    """The metric the run is judged by (its record's), else its first dev/validation metric."""
    rec = run / "result.json"
    if rec.is_file():
        name = (json.loads(rec.read_text()).get("metrics") or {}).get("primary_metric")
        if name:
            return name
    cols = [c for c in history(run).columns if "/" in c and not c.endswith("/loss")]
    return cols[0] if cols else "dev/loss"


def from_records(paths: list[str], patterns: list[str]) -> dict[Path, tuple[pd.DataFrame, str]]:
    """Each run folder matching a pattern (a glob, matched against the folder's tail) in the records
    files, with its evaluations (the record's `curve`) and primary metric; the last record wins."""
    found: dict[Path, tuple[pd.DataFrame, str]] = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            rec = json.loads(line)
            folder, m = rec["run"]["folder"], rec.get("metrics") or {}
            if not m.get("curve") or not any(
                fnmatch.fnmatch(folder, p) or fnmatch.fnmatch(folder, f"*/{p}") for p in patterns
            ):
                continue
            found[Path(folder)] = (pd.DataFrame(m["curve"]), m.get("primary_metric") or "")
    if not found:
        raise ConfigError(f"no record with a curve in {paths} has a run folder matching {patterns}")
    return dict(sorted(found.items()))


def curves(
    runs: list[Path], labels: list[str], metric: str | None, stem: Path,
    records: dict[Path, tuple[pd.DataFrame, str]] | None = None,
) -> list[Path]:  # fmt: skip
    """<stem>.csv (run, label, epoch, step, metric, value) and <stem>.png/.pdf (one panel per metric).
    `records` (from_records) replaces reading each run's history.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames = []
    for run, label in zip(runs, labels, strict=True):
        h, name = records[run] if records else (history(run), None)
        name = metric or name or primary(run)
        if name not in h:
            raise ConfigError(
                f"{run}: no {name!r} in its evaluations; it has {sorted(c for c in h if '/' in c)}"
            )
        frames.append(pd.DataFrame({"run": str(run), "label": label, "epoch": h["epoch"],
                                    "step": h["step"], "metric": name, "value": h[name]}))  # fmt: skip
    df = pd.concat(frames, ignore_index=True)
    names = list(dict.fromkeys(df["metric"]))
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for label, part in df[df["metric"] == name].groupby("label", sort=False):
            ax.plot(part["epoch"], part["value"], marker="o", ms=3, label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    fig.tight_layout()
    paths = [write_csv(df, stem.with_suffix(".csv")), *write_figure(fig, stem)]
    plt.close(fig)
    return paths


def report(args) -> list[Path]:
    """`analyze curves --runs R... [--records results/X.jsonl ...] [--labels ...] [--metric M]
    [--name N] [--out DIR]`: R are run folders or globs (with --records: matched against the
    records' run folders, whose history need not exist here)."""
    import glob

    records = from_records(args.records, args.runs) if getattr(args, "records", None) else None
    if records:
        runs = list(records)
    else:
        runs = [Path(p) for pattern in args.runs for p in (sorted(glob.glob(pattern)) or [pattern])]
        runs = [r for r in runs if r.is_dir()]
    if not runs:
        raise ConfigError(f"no run folders match {args.runs}")
    # task, the hparam tag's first part (the lr) and the seed: what tells a sweep's runs apart
    labels = args.labels or [
        f"{r.parts[-4]} {r.parts[-2].split('_')[0]} {r.parts[-1]}" for r in runs
    ]
    if len(labels) != len(runs):
        raise ConfigError(f"--labels: {len(labels)} given for {len(runs)} runs")
    stem = Path(args.out) / (args.name or "curves")
    return curves(runs, labels, getattr(args, "metric", None), stem, records)
