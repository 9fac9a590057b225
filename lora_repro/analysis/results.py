"""Run records (results/<experiment>.jsonl, written by `lora-repro collect`) as one pandas DataFrame,
and runs grouped into cells over seeds (what each table cell summarises).

One row per run: who it is (experiment, model, task, method and hyperparameter tags, seed), how it
ended (status, error), what it scored (the primary metric and every other metric at the best epoch,
generation metrics for NLG) and what it cost (parameters, peak memory, throughput, time, adapter size).

A run that appears more than once (two collects concatenated, a rerun copied in) counts once: a success
beats a failure, then the latest start wins, so tables never count a seed twice.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lora_repro.errors import ConfigError
from lora_repro.record import RunRecord, environment_label

log = logging.getLogger(__name__)

# Cost fields copied as they are (record.Cost).
COST = (
    "method_params",
    "trainable_params",
    "total_params",
    "head_params",
    "peak_memory_bytes",
    "peak_memory_kind",
    "tokens_per_s",
    "wall_time_s",
    "train_time_s",
    "adapter_bytes",
    "steps",
)
STATUS_ORDER = {"success": 0, "oom": 1, "failed": 2}  # which duplicate wins
Getter = Callable[[pd.Series], Any]


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records from one JSON-lines file; a malformed line is an error naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no results file {str(path)!r}; run `lora-repro collect <experiment>`")
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{i} is not JSON ({exc.msg})") from None
    return out


def _flat(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flat(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = float(value)


def flatten(rec: dict[str, Any]) -> dict[str, Any]:
    """One record (any schema, read as a RunRecord) -> one flat row. Metric columns are
    `metric:<name>` (the best epoch's metrics, e.g. `metric:dev/accuracy`) and `gen:<path>` (schema-1
    NLG generation metrics, e.g. `gen:test/BLEU`)."""
    r = RunRecord.from_dict(rec)
    cfg, method = r.config, r.config.get("method") or {}
    parts = str(r.run.id or "").split("/")
    row: dict[str, Any] = {
        "run_id": r.run.id,
        "experiment": r.run.experiment or cfg.get("experiment"),
        "model": (cfg.get("model") or {}).get("name"),
        "task": (cfg.get("task") or {}).get("name"),
        "method": method.get("name"),
        "method_tag": parts[3] if len(parts) == 6 else method.get("name"),
        "hparam_tag": parts[4] if len(parts) == 6 else None,
        "seed": cfg.get("seed"),
        "targets": method.get("targets"),
        "r": method.get("r"),
        "lr": (cfg.get("train") or {}).get("lr"),
        "status": r.status,
        "error": r.error,
        "config_hash": r.config_hash,
        "started": r.run.started,
        "primary_metric": r.metrics.primary_metric,
        "primary": r.metrics.primary,
        "task_version": r.task.version,
        "env": environment_label(r),
        "schema": r.schema,
    }
    for name in COST:
        row[name] = getattr(r.cost, name)
    best: dict[str, Any] = {}
    _flat("", r.metrics.best, best)
    row.update({f"metric:{k}": v for k, v in best.items()})
    gen: dict[str, Any] = {}
    _flat("", r.metrics.generation or {}, gen)
    row.update({f"gen:{k}": v for k, v in gen.items()})
    return row


def frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Records -> DataFrame, one row per distinct run (see the module docstring for duplicates)."""
    rows = [flatten(r) for r in records]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["_rank"] = df["status"].map(STATUS_ORDER).fillna(3)
    df = df.sort_values(["_rank", "started"], ascending=[True, False], na_position="last")
    key = ["run_id", "config_hash"]
    dup = int(df.duplicated(key).sum())
    if dup:
        log.warning(
            "%d duplicate record(s) of the same run ignored (kept success, then newest)", dup
        )
    df = df.drop_duplicates(key).drop(columns="_rank")
    df = df.sort_values(["experiment", "model", "task", "method_tag", "hparam_tag", "seed"])
    df.attrs["duplicates"] = dup
    return df.reset_index(drop=True)


def load(experiments: Iterable[str], results_dir: str | Path = "results") -> pd.DataFrame:
    """The DataFrame of results/<experiment>.jsonl for each experiment that has a file; an experiment
    with none is logged and skipped (a table then shows its cells as missing)."""
    records: list[dict[str, Any]] = []
    for name in experiments:
        path = Path(results_dir) / f"{name}.jsonl"
        if path.is_file():
            records += read_jsonl(path)
        else:
            log.info("no %s yet (run `lora-repro collect %s`)", path, name)
    return frame(records)


def metric(row: pd.Series, name: str) -> float | None:
    """A run's value of metric `name`: `primary`, an exact column (`metric:dev/accuracy`), or a bare
    name (`BLEU`, `loss`) matched against the last path component of its generation metrics first
    (test split preferred) and then of its best-epoch metrics."""
    if name == "primary":
        value = row.get("primary")
    elif name in row.index:
        value = row[name]
    else:
        value = None
        for prefix in ("gen:", "metric:"):
            hits = [c for c in row.index if c.startswith(prefix) and c.rsplit("/", 1)[-1] == name]
            hits = [c for c in hits if pd.notna(row[c])]
            hits.sort(key=lambda c: ("test" not in c, c))
            if hits:
                value = row[hits[0]]
                break
    return None if value is None or pd.isna(value) else float(value)


# --- runs over seeds: the cells of the tables --------------------------------------------------------


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)  # one per successful run (seed)
    failed: int = 0  # runs of this cell whose record says failed or oom
    paper: float | None = None

    def centre(self, how: str) -> float | None:
        if not self.values:
            return None
        return statistics.median(self.values) if how == "median" else statistics.fmean(self.values)

    def text(self, how: str, digits: int) -> str:
        c = self.centre(how)
        out = "–" if c is None else f"{c:.{digits}f}"
        if len(self.values) > 1:
            out += f" ±{statistics.stdev(self.values):.{digits}f}"
        if self.values or self.failed:
            out += f" [{len(self.values)}" + (f", {self.failed} failed]" if self.failed else "]")
        if self.paper is not None and not pd.isna(self.paper):
            out += f" ({float(self.paper):.{digits}f})"
        return out


def value(task: str | None, name: str, scale: float = 1.0) -> Getter:
    """Getter of a run's metric `name` (see results.metric) times `scale`, for runs of `task` (any
    task when None). None: the run is not in this column; NaN: it is, without a value (failed)."""

    def get(run: pd.Series) -> Any:
        if task is not None and run["task"] != task:
            return None
        v = metric(run, name) if run["status"] == "success" else None
        return math.nan if v is None else v * scale

    return get


def fill(df: pd.DataFrame, key: Getter, cols: dict[str, Getter]) -> dict[Any, dict[str, Cell]]:
    """Group runs into cells: key(run) picks the row, each column's getter the run's value there."""
    out: dict[Any, dict[str, Cell]] = {}
    for _, run in df.iterrows():
        row = out.setdefault(key(run), {c: Cell() for c in cols})
        for col, get in cols.items():
            v = get(run)
            if v is None:
                continue
            if run["status"] != "success":
                row[col].failed += 1
            elif not math.isnan(v):
                row[col].values.append(v)
    return out
