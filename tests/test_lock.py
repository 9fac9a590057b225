"""One writer per run folder (lora_repro/lock.py): concurrent launches of one run train once and
refuse the rest with the owner's name; stale locks are taken over; leftovers of kills are cleaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import toytask

from lora_repro import identity, lock, train
from lora_repro.errors import ConfigError

TESTS = str(Path(__file__).parent)


def _env() -> dict[str, str]:
    root = str(Path(__file__).parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}  # fmt: skip


def test_eight_concurrent_launches_train_once_and_refuse_seven(tmp_path):
    args = ["train", "experiment=smoke", "task.name=toy", f"runs_dir={tmp_path}",
            "train.max_steps=100000", "train.eval_every=null", "logging.log_every=1"]  # fmt: skip
    cmd = [sys.executable, "-c", toytask.SUBPROCESS.format(tests=TESTS), *args]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(8)]  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and sum(p.poll() is not None for p in procs) < 7:
            time.sleep(0.2)
        done = [p for p in procs if p.poll() is not None]
        running = [p for p in procs if p.poll() is None]
        assert len(done) == 7 and len(running) == 1
        for p in done:
            err = p.stderr.read().strip().splitlines()
            assert p.returncode == 2 and err[-1].startswith("error: "), err[-3:]
            assert f"is being trained by pid {running[0].pid} on " in err[-1]
        (folder,) = tmp_path.glob("smoke/*/*/*/*/s0")
        held = json.loads((folder / lock.NAME).read_text())
        assert held["pid"] == running[0].pid
        assert [p.name for p in folder.glob(".lock*")] == [".lock"]  # no owner files left behind
        history, deadline = folder / "history.jsonl", time.time() + 60
        while time.time() < deadline and len(_lines(history)) < 3:  # the one trainer trains
            time.sleep(0.2)
        rows = _lines(history)
        steps = [json.loads(r)["step"] for r in rows if '"train"' in r]
        assert len(steps) >= 3 and steps == list(range(1, len(steps) + 1))  # one writer, no dups
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_stale_lock_is_taken_over_and_a_live_one_refuses(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    cfg = toytask.config(tmp_path, "train.max_steps=2")
    folder = identity.run_dir(cfg)
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    (folder / lock.NAME).write_text(json.dumps({**lock.owner(), "pid": int(dead)}))
    assert train.run(cfg)["status"] == "success"  # its owner is gone: taken over
    assert not (folder / lock.NAME).exists()  # released at the end

    cfg2 = toytask.config(tmp_path / "b", "train.max_steps=2")
    folder2 = identity.run_dir(cfg2)
    folder2.mkdir(parents=True)
    (folder2 / lock.NAME).write_text(json.dumps({**lock.owner(), "pid": os.getppid()}))  # alive
    with pytest.raises(ConfigError, match=rf"is being trained by pid {os.getppid()} on "):
        train.run(cfg2)
    assert not (folder2 / "result.json").exists()
    monkeypatch.setenv("SLURM_JOB_ID", "77")  # the same Slurm job, requeued: its own old lock
    (folder2 / lock.NAME).write_text(
        json.dumps({"host": "elsewhere", "pid": 1, "slurm_job_id": "77"})
    )
    assert train.run(cfg2)["status"] == "success"


def test_a_refused_or_bad_launch_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    with pytest.raises(ConfigError, match="exceeds the 96 training examples"):
        train.run(toytask.config(tmp_path, "train.batch_size=512"))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # no lock, record or log
    assert not identity.run_dir(toytask.config(tmp_path, "train.batch_size=512")).exists()


def test_restart_cleans_what_kills_leave(tmp_path, monkeypatch):
    """Killed before the first checkpoint: its history rows go; killed mid-write: temp files go;
    killed after result.json: the finished run's checkpoint folder goes on the next launch."""
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    cfg = toytask.config(tmp_path, "train.max_steps=3")
    folder = identity.run_dir(cfg)
    folder.mkdir(parents=True)
    (folder / "history.jsonl").write_text('{"event": "train", "step": 1, "loss": 9.0}\n')
    (folder / ".result.json.abc123.tmp").write_text("{")
    (folder / "checkpoint" / ".tmp-step-00000002").mkdir(parents=True)
    rec = train.run(cfg)
    rows = [json.loads(r) for r in (folder / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["event"] == "train"] == [1, 2, 3]
    assert all(r.get("loss") != 9.0 for r in rows)
    assert not list(folder.glob(".*.tmp")) and not (folder / "checkpoint").exists()
    (folder / "checkpoint" / "step-00000003").mkdir(parents=True)  # as if killed after result.json
    assert train.run(cfg)["skipped"] and not (folder / "checkpoint").exists()
    assert rec["status"] == "success"


def test_a_file_system_without_hard_links_still_locks_exclusively(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = lock.RunLock(tmp_path / "run").acquire()
    assert lock.read(tmp_path / "run")["pid"] == os.getpid()
    monkeypatch.setattr(lock, "alive", lambda held: True)  # the same pid: a live owner
    with pytest.raises(ConfigError, match=rf"is being trained by pid {os.getpid()} on "):
        lock.RunLock(tmp_path / "run").acquire()
    first.release()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == []
