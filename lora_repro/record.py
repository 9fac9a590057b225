"""A run's record: result.json, the typed RunRecord (written here only, read by analysis), plus the
history.jsonl it accumulates and the environment it ran in.

`result.json` is written once per attempt, atomically, with status success | failed | oom (peft's
method_comparison records failures as results too).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from lora_repro.atomic import write_atomic
from lora_repro.paths import REPO


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# --- the typed record ------------------------------------------------------------------------------
# Schema 1: records written before the typed RunRecord (no `schema` key), with the same fields;
# the oldest of them kept NLG scores under metrics.generation (now they join metrics.best).
# Schema 3 adds task.data_fingerprint.
SCHEMA = 3


@dataclass
class RunInfo:
    id: str | None = None  # <experiment>/<model>/<task>/<method tag>/<hparam tag>/s<seed>
    experiment: str | None = None
    folder: str | None = None
    started: str | None = None  # ISO time, UTC
    wall_time_s: float | None = None
    resumed_from_step: int | None = None
    reused_from: str | None = None  # the folder of the identical run whose record this copies


@dataclass
class TaskInfo:
    name: str | None = None
    version: str | None = None  # bumped whenever data handling or scoring changes
    train_size: int | None = None
    eval_sizes: dict[str, int] | None = None
    data_fingerprint: str | None = None  # hash of the data files read (data.fingerprint)


@dataclass
class Metrics:
    primary_metric: str | None = None  # `<split>/<metric>`, the record's headline number
    selected_by: str | None = None  # the evaluation that chose the best epoch
    primary: float | None = None
    best_step: int | None = None
    best_epoch: float | None = None
    best: dict[str, float] = field(default_factory=dict)  # the best evaluation's `<split>/<name>`
    final: dict[str, float] = field(default_factory=dict)  # the last evaluation's
    # Every evaluation, in order ({epoch, step, <split>/<name>...}): the learning curve travels with
    # the record, so a study's committed results can show that its dev metric plateaued.
    curve: list[dict[str, float]] = field(default_factory=list)
    generation: dict[str, Any] | None = None  # schema 1 only (see SCHEMA)


@dataclass
class Cost:
    trainable_params: int | None = None
    method_params: int | None = None  # the paper's |Θ|: trainable without the task head
    head_params: int | None = None
    total_params: int | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None  # cuda_max_allocated | cpu_max_rss
    steps: int | None = None
    train_time_s: float | None = None
    tokens_per_s: float | None = None
    wall_time_s: float | None = None
    # this process's CPU time, plus earlier attempts' up to the checkpoint it resumed from (since
    # 2026-12-05; before, the last attempt's only): a shared machine inflates wall time
    cpu_time_s: float | None = None
    adapter_bytes: int | None = None


@dataclass
class RunRecord:
    status: str  # success | failed | oom
    error: str | None = None
    run: RunInfo = field(default_factory=RunInfo)
    config: dict[str, Any] = field(default_factory=dict)  # the resolved RunConfig
    config_hash: str | None = None
    task: TaskInfo = field(default_factory=TaskInfo)
    metrics: Metrics = field(default_factory=Metrics)
    cost: Cost = field(default_factory=Cost)
    environment: dict[str, Any] = field(default_factory=dict)  # versions, device, dtype, host
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["metrics"]["generation"] is None:
            del out["metrics"]["generation"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Any schema's record (missing fields default; fields this schema lacks are dropped)."""
        parts = {"run": RunInfo, "task": TaskInfo, "metrics": Metrics, "cost": Cost}
        values: dict[str, Any] = {"schema": data.get("schema", 1)}
        for f in fields(cls):
            if f.name in data and f.name != "schema":
                values[f.name] = data[f.name]
        for name, kind in parts.items():
            known = {f.name for f in fields(kind)}
            values[name] = kind(**{k: v for k, v in (data.get(name) or {}).items() if k in known})
        values["status"] = data.get("status") or "unknown"
        return cls(**values)


class History:
    """history.jsonl: one JSON object a line (train loss, eval metrics), flushed as written. The byte
    offset goes into checkpoints, so a resumed run first cuts what its killed attempt wrote after."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        # Strict JSON: an undefined metric (Pearson of constant predictions) is null, never the `NaN`
        # token strict readers reject; a non-finite training loss fails the run before it gets here.
        clean = {
            k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()
        }
        line = json.dumps(clean, sort_keys=True, allow_nan=False)
        with self.path.open("a") as f:
            f.write(line + "\n")

    def offset(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, offset: int) -> None:
        with self.path.open("a") as f:
            f.truncate(offset)

    def rows(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


# The packages whose versions can move a number; recorded per run so mixed environments are visible.
STACK = ("torch", "transformers", "tokenizers", "datasets", "numpy", "safetensors", "hydra-core")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: Any, dtype: str, world_size: int) -> dict[str, Any]:
    import torch
    import transformers

    from lora_repro.distributed import cpu_name

    if getattr(device, "type", str(device)) == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu ({os.cpu_count()} cores, {cpu_name()})"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "device": name,
        "dtype": dtype,
        "world_size": world_size,
        "git_sha": git_sha(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "host": platform.node(),
        "argv": sys.argv,
        "packages": {p: _version(p) for p in STACK},
    }


def environment_label(record: RunRecord | dict[str, Any]) -> str:
    """The environment that produced a record, as tables and `collect` print it."""
    env = record.environment if isinstance(record, RunRecord) else record.get("environment") or {}
    return f"torch {env.get('torch', '?')}, transformers {env.get('transformers', '?')}"


def git_sha() -> str | None:
    """The commit of the code that ran (with `-dirty` when it had local changes), or None."""
    root = REPO
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) if sha else None


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def write_result(folder: Path, record: RunRecord | dict[str, Any]) -> None:
    data = record.to_dict() if isinstance(record, RunRecord) else record
    write_atomic(folder / "result.json", json.dumps(data, indent=2, sort_keys=False, default=str))
