"""experiments/park.py: unfinished runs with a checkpoint survive a lost runs/ through git."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "experiments" / "park.py"


def make(runs: Path, name: str, status: str | None, mb: float = 0.01) -> Path:
    folder = runs / "exp" / name / "s0"
    (folder / "checkpoint" / "step-00000010").mkdir(parents=True)
    (folder / "config.yaml").write_text("# config_hash: x\n")
    (folder / "checkpoint" / "step-00000010" / "state.pt").write_bytes(b"0" * int(mb * 2**20))
    (folder / ".lock").write_text("{}")
    if status:
        (folder / "result.json").write_text(json.dumps({"status": status}))
    return folder


def park(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_save_packs_unfinished_small_runs_and_restore_keeps_local_ones(tmp_path: Path):
    runs, archive = tmp_path / "runs", tmp_path / "parked.tar.gz"
    make(runs, "done", "success")
    failed = make(runs, "failed", "failed")  # a failed attempt resumes too
    make(runs, "big", None, mb=2)
    killed = make(runs, "killed", None)
    out = park("save", "--runs", str(runs), "--archive", str(archive), "--max-mb", "1")
    assert "too big to park" in out and "parked exp/killed/s0" in out and "done" not in out
    lost = tmp_path / "fresh"
    make(lost, "killed", None)  # already here: kept, not overwritten
    out = park("restore", "--runs", str(lost), "--archive", str(archive))
    assert "kept local exp/killed/s0" in out and "restored exp/failed/s0" in out
    back = lost / failed.relative_to(runs)
    assert (back / "checkpoint" / "step-00000010" / "state.pt").is_file()
    assert not (back / ".lock").exists() and not (lost / "exp" / "big").exists()
    assert killed.is_dir()
