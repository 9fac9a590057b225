"""Park unfinished runs in git between sessions on machines that lose runs/ (issues #18, #19).

This project's CPU studies run on machines whose disk does not outlive a session; only the git
checkout does. A run longer than a session (SmolLM2 on E2E: ~3 CPU-hours) would start over every
time. `save` packs every unfinished run folder (no success record) that holds a checkpoint and is
small enough (parameter-efficient runs: the checkpoint is the trainable weights and their optimizer
state, a few MB) into experiments/parked/runs.tar.gz; `restore` unpacks the ones runs/ lacks, so the
next `train -m` resumes them from their last checkpoint (checkpoint.py: bit-identical resume).

    python experiments/park.py save [--runs runs] [--max-mb 16]
    python experiments/park.py restore [--runs runs]
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT / "experiments" / "parked" / "runs.tar.gz"
SKIP = {".lock"}  # a dead owner's lock: the next launch takes the folder


def unfinished(runs: Path) -> list[Path]:
    """Run folders (a config.yaml) without a success record that hold a checkpoint."""
    out = []
    for cfg in sorted(runs.rglob("config.yaml")):
        folder = cfg.parent
        rec = folder / "result.json"
        done = rec.is_file() and json.loads(rec.read_text()).get("status") == "success"
        if not done and any((folder / "checkpoint").glob("step-*")):
            out.append(folder)
    return out


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def save(runs: Path, max_mb: float, archive: Path = ARCHIVE) -> int:
    folders = unfinished(runs)
    kept = [f for f in folders if size_mb(f) <= max_mb]
    for f in sorted(set(folders) - set(kept)):
        print(f"too big to park ({size_mb(f):.0f} MB > {max_mb:g}): {f.relative_to(runs)}")
    if not kept:
        archive.unlink(missing_ok=True)
        print("nothing to park")
        return 0
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in kept:
            tar.add(f, arcname=str(f.relative_to(runs)),
                    filter=lambda t: None if Path(t.name).name in SKIP else t)  # fmt: skip
            print(f"parked {f.relative_to(runs)} ({size_mb(f):.1f} MB)")
    tmp.replace(archive)
    return 0


def restore(runs: Path, archive: Path = ARCHIVE) -> int:
    if not archive.is_file():
        print("nothing parked")
        return 0
    with tarfile.open(archive) as tar:
        tops = {Path(m.name).parent for m in tar.getmembers() if m.name.endswith("config.yaml")}
        for top in sorted(tops):
            if (runs / top).exists():  # the local folder is as new or newer: keep it
                print(f"kept local {top}")
                continue
            members = [m for m in tar.getmembers() if Path(m.name).is_relative_to(top)]
            tar.extractall(runs, members=members, filter="data")
            print(f"restored {top}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("action", choices=("save", "restore"))
    p.add_argument("--runs", default=str(ROOT / "runs"))
    p.add_argument("--max-mb", type=float, default=16.0)
    p.add_argument("--archive", default=str(ARCHIVE))
    a = p.parse_args()
    runs, archive = Path(a.runs), Path(a.archive)
    return save(runs, a.max_mb, archive) if a.action == "save" else restore(runs, archive)


if __name__ == "__main__":
    sys.exit(main())
