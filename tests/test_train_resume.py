"""A run killed with SIGKILL after a checkpoint exists, started again with the same command, resumes
and ends bit-identical to an uninterrupted run: metrics, history and adapter weights (on the CPU,
and on CUDA where one is present: it passed on an H100, 2026-12-06)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import toytask
from safetensors.torch import load_file

from lora_repro import train

TESTS = str(Path(__file__).parent)
# Dropout stays on (tiny-roberta's 0.1 plus LoRA dropout), so the RNG state has to be restored too.
ARGS = [
    "method.dropout=0.1", "train.max_steps=null", "train.epochs=3", "train.checkpoint_every=5",
    "train.lr=3e-3", "train.weight_decay=0.1",
]  # fmt: skip
# Past the first epoch's evaluation (12 steps an epoch), mid-way through the second epoch.
KILL_AFTER_STEP = 15


def _command(runs: Path, args: list[str]) -> list[str]:
    base = ["experiment=smoke", "task.name=toy", f"runs_dir={runs}", "train.eval_every=null"]
    base += ["task.train_limit=null", "task.eval_limit=null", "logging.log_every=1"]
    return [sys.executable, "-c", toytask.SUBPROCESS.format(tests=TESTS), "train", *base, *args]


def _env() -> dict[str, str]:
    root = str(Path(__file__).parent.parent)
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


# Length-grouped batching (batching.epoch_order) must keep the promise too: its order is a function
# of (seed, epoch), regenerated on resume.
@pytest.mark.parametrize("extra", [[], ["train.group_by_length=true"]], ids=["plain", "grouped"])
def test_sigkill_then_rerun_resumes_bit_identically(tmp_path, monkeypatch, extra):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    args = [*ARGS, *extra]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same thread count as the subprocess: same float reductions
    try:
        # 1. the reference, uninterrupted, in this process
        reference = train.run(toytask.config(tmp_path / "ref", *args))
        folder_ref = tmp_path / "ref" / reference["run"]["id"]

        # 2. the same command in a subprocess, killed once a checkpoint past KILL_AFTER_STEP exists
        runs = tmp_path / "killed"
        folder = runs / reference["run"]["id"]
        proc = subprocess.Popen(_command(runs, args), env=_env(), stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            steps = [int(p.name[5:]) for p in (folder / "checkpoint").glob("step-*")]
            if steps and max(steps) >= KILL_AFTER_STEP:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
        proc.wait(timeout=30)
        stderr = proc.stderr.read()
        assert proc.returncode == -signal.SIGKILL, (
            f"not killed (rc {proc.returncode}): {stderr[-2000:]}"
        )
        assert not (folder / "result.json").exists()
        assert (folder / "checkpoint").exists()
        found = train.checkpoint.latest(folder / "checkpoint")
        spent = torch.load(found / "state.pt", weights_only=False)["position"]["cpu_time"]

        # 3. the same command again: resumes from the checkpoint and finishes
        rerun = subprocess.run(
            _command(runs, args), env=_env(), capture_output=True, text=True, timeout=120
        )
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    finally:
        torch.set_num_threads(threads)

    resumed = json.loads((folder / "result.json").read_text())
    assert resumed["status"] == "success"
    assert resumed["run"]["resumed_from_step"] >= KILL_AFTER_STEP
    assert resumed["run"]["resumed_from_step"] < reference["cost"]["steps"]
    assert resumed["metrics"] == reference["metrics"]  # exact float equality, best epoch included
    assert (folder / "adapter.safetensors").read_bytes() == (
        folder_ref / "adapter.safetensors"
    ).read_bytes()
    # and the weights are not trivially equal: LoRA's B moved away from its zero init
    assert any(
        ".B." in n and v.abs().sum() > 0
        for n, v in load_file(str(folder / "adapter.safetensors")).items()
    )
    assert (folder / "history.jsonl").read_text() == (folder_ref / "history.jsonl").read_text()
    assert "resuming from" in (folder / "log.txt").read_text()
    # CPU time counts the killed attempt's up to its checkpoint, then the rerun's
    assert spent > 0 and resumed["cost"]["cpu_time_s"] > spent


@pytest.mark.parametrize("leftover", [".tmp-step-00000010", "step-00000010"])
def test_incomplete_checkpoint_folders_are_ignored(tmp_path, leftover):
    from lora_repro import checkpoint

    (tmp_path / "step-00000005").mkdir()
    for name in (checkpoint.WEIGHTS, checkpoint.STATE):
        (tmp_path / "step-00000005" / name).write_bytes(b"x")
    (tmp_path / leftover).mkdir()  # a kill in the middle of writing: no state.pt yet
    (tmp_path / leftover / checkpoint.WEIGHTS).write_bytes(b"x")
    assert checkpoint.latest(tmp_path) == tmp_path / "step-00000005"
