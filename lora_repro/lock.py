"""One writer per run folder: an exclusive lock file naming its owner (host, pid, Slurm job).

Two launches of the same run (a sweep relaunched while it runs, `tasks_per_node=2`, a user's second
terminal) would otherwise train into one folder at once, duplicate history rows and delete each
other's checkpoints. The owner is written to a temporary file first and hard-linked into place with
link(2), which fails when the name exists (atomic on local file systems and NFS): a lock is never
seen half-written, so a refusal always names its owner. A lock whose owner is gone is stale and
taken over: same host and the pid is dead, or the same Slurm job id (a requeued job), or a Slurm job
that squeue no longer knows.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from lora_repro.errors import ConfigError

NAME = ".lock"


def owner() -> dict[str, Any]:
    return {"host": platform.node(), "pid": os.getpid(), "slurm_job_id": _job_id()}


def _job_id() -> str | None:
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")


def describe(held: dict[str, Any]) -> str:
    job = f", Slurm job {held['slurm_job_id']}" if held.get("slurm_job_id") else ""
    return f"pid {held.get('pid')} on {held.get('host')}{job}"


def read(folder: Path) -> dict[str, Any] | None:
    """The lock's owner, or None when the folder is not locked."""
    try:
        return json.loads((folder / NAME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {}  # damaged (written by hand, or by an older version): an owner we cannot name


def alive(held: dict[str, Any]) -> bool:
    """Whether the owner may still be running (when in doubt: yes)."""
    me = owner()
    job = held.get("slurm_job_id")
    if job and job == me["slurm_job_id"]:
        return False  # this very job, requeued: its earlier attempt is gone
    if held.get("host") == me["host"] and isinstance(held.get("pid"), int):
        try:
            os.kill(held["pid"], 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if job:
        try:
            out = subprocess.run(["squeue", "-h", "-j", str(job)], capture_output=True, text=True,
                                 timeout=10)  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            return True
        return out.returncode == 0 and bool(out.stdout.strip())
    return True


class RunLock:
    """`with RunLock(folder):` or acquire()/release(); creates the folder if needed."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.path, self.held = folder, folder / NAME, False
        self.created: list[Path] = []  # the folders acquire() made, deepest first

    def acquire(self) -> RunLock:
        missing = [p for p in (self.folder, *self.folder.parents) if not p.exists()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.created = missing
        me = self.folder / f"{NAME}.{platform.node()}.{os.getpid()}"
        me.write_text(json.dumps(owner()))
        try:
            self._take(me)
        finally:
            me.unlink(missing_ok=True)
        return self

    def _take(self, mine: Path) -> None:
        for _ in range(3):
            try:
                _link(mine, self.path)
            except FileExistsError:
                held = read(self.folder)
                if held is None:
                    continue  # released in between: try again
                if held and not alive(held):
                    self.path.unlink(missing_ok=True)  # stale: its owner is gone
                    continue
                who = describe(held) if held else "another process"
                raise ConfigError(f"{self.folder} is being trained by {who}") from None
            self.held = True
            return
        raise ConfigError(f"{self.folder}: could not take its lock {self.path}")

    def release(self, remove_empty: bool = False) -> None:
        """Drop the lock (and, with remove_empty, the folders acquire() made, where nothing else came
        to live: a launch refused by a ConfigError leaves nothing behind)."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        if remove_empty:
            for folder in self.created:
                with contextlib.suppress(OSError):  # not empty: something else lives there
                    folder.rmdir()

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _link(source: Path, lock: Path) -> None:
    """Make `lock` a hard link of `source` (atomic, and the lock appears with its owner written); on a
    file system without hard links, create it exclusively and write it (a reader may then briefly
    see it empty and name no owner). FileExistsError when it exists."""
    try:
        os.link(source, lock)
    except FileExistsError:
        raise
    except OSError:  # EPERM / ENOTSUP / EXDEV: no hard links here
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(source.read_text())
