"""`lora-repro status experiment=NAME [overrides]`: where every run of a sweep stands, read from the
run folders alone (records and locks; no Slurm needed), with the same overrides as its `train -m`.

Each planned run is one of: done (a success record; its primary metric), failed / oom (the recorded
error's first line), running (its folder's lock is held by a live process), unfinished (a folder
without a record and without a live owner: killed; relaunching resumes it), waiting (its init_from
source has not succeeded), reusable (an identical run of a `hydra.sweeper.reuse` experiment
succeeded: the next launch copies its record), queued (handed to a launcher that is still waiting on
it: a Slurm array task without a free slot yet), missing (never started).

Queued: while `train -m` waits on its jobs, it names them in a manifest, <runs_dir>/.queued/<host>.
<pid>.json (`queued`), removed when it returns. Without it, 30 pending array tasks read "missing".
A manifest whose launcher is certainly gone (killed; `lock.alive` is False only then) is ignored and
deleted, so killed launches leave nothing behind: its pending jobs may still start, and then read
"running".
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from lora_repro import identity, lock, record, sweep
from lora_repro.atomic import write_atomic
from lora_repro.compose import compose, values
from lora_repro.config import RunConfig
from lora_repro.errors import ConfigError

log = logging.getLogger(__name__)


def jobs(overrides: list[str]) -> tuple[sweep.Expanded, list[str]]:
    """The sweep's jobs, grid by grid with each grid's init_from, as the skip_done sweeper expands
    them (sweep.expand), and its `reuse` experiments."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o for o, p in zip(overrides, parsed, strict=True) if not p.is_sweep_override()]
    sweeper = compose(fixed, return_hydra_config=True).hydra.sweeper
    return sweep.expand(sweeper, overrides), list(sweeper.get("reuse") or [])


QUEUED = ".queued"


def _root(p: sweep.Planned) -> Path:
    """The runs_dir a planned run lives under (its folder less its run id's parts)."""
    return p.folder.parents[len(Path(p.run_id).parts) - 1]


@contextlib.contextmanager
def queued(planned: Sequence[sweep.Planned]) -> Iterator[None]:
    """While the block runs (a launcher waiting on its jobs), `status` reads these runs as queued."""
    by_root: dict[Path, list[str]] = {}
    for p in planned:
        by_root.setdefault(_root(p), []).append(str(p.folder))
    files = [
        write_atomic(root / QUEUED / f"{platform.node()}.{os.getpid()}.json",
                     json.dumps({"owner": lock.owner(), "folders": folders}))
        for root, folders in by_root.items()
    ]  # fmt: skip
    try:
        yield
    finally:
        for path in files:
            path.unlink(missing_ok=True)


def queued_runs(roots: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Run folder -> its launcher, from the manifests of launchers still alive (a dead one's
    manifest is deleted)."""
    out: dict[str, dict[str, Any]] = {}
    for root in roots:
        for path in sorted((root / QUEUED).glob("*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                manifest = json.loads(path.read_text())
                if lock.alive(manifest["owner"]):
                    out.update(dict.fromkeys(manifest["folders"], manifest["owner"]))
                else:
                    path.unlink(missing_ok=True)
    return out


def warn_in_progress(
    planned: Sequence[sweep.Planned], reuse: Sequence[str], load: Callable
) -> None:
    """Warn when a run about to train has its `reuse` source queued or running in another launch
    (a preset launched before the one it reuses finished): it would train twice."""
    todo = [p for p in planned if p.state == "todo"]
    if not todo or not reuse:
        return
    busy: Counter[str] = Counter()
    queues: dict[str, dict[str, Any]] = {}  # runs_dir -> the live launchers' queued folders
    for p in todo:
        cfg = load(p.overrides)
        for name in reuse:
            folder = identity.run_dir(replace(cfg, experiment=name))
            if cfg.runs_dir not in queues:
                queues[cfg.runs_dir] = queued_runs([Path(cfg.runs_dir)])
            held = lock.read(folder)
            if str(folder) in queues[cfg.runs_dir] or (held is not None and lock.alive(held)):
                busy[name] += 1
    for name, n in busy.items():
        log.warning(
            "hydra.sweeper.reuse: %d run(s) of this sweep are still queued or running as %s: they "
            "train again here; to reuse them, relaunch after that launch finishes", n, name,
        )  # fmt: skip


def state(p: sweep.Planned, queue: dict[str, dict[str, Any]] | None = None) -> tuple[str, str]:
    """(state, detail) of one planned run from its folder (and the live launchers' queue)."""
    rec = record.read_json(p.folder / "result.json")
    if p.state == "waiting":
        return "waiting", f"needs {p.needs}"
    if p.state == "reuse" and p.source is not None:
        if sweep.restores(p):
            return "done", "collected in results/; the next launch restores its folder's record"
        return "reusable", f"ran as {p.source['run']['id']}; the next launch copies its record"
    if rec is not None:
        status = rec.get("status", "?")
        if status == "success":
            m = rec.get("metrics") or {}
            value = m.get("primary")
            return "done", f"{m.get('primary_metric')} = {value:.4f}" if value is not None else ""
        return status, str(rec.get("error") or "").strip().splitlines()[0] if rec.get(
            "error"
        ) else ""
    held = lock.read(p.folder)
    if held is not None and (not held or lock.alive(held)):
        return "running", lock.describe(held) if held else "locked"
    launcher = (queue or {}).get(str(p.folder))
    if launcher is not None:
        return "queued", f"launched by {lock.describe(launcher)}; not started yet"
    if p.folder.exists():
        return "unfinished", "no record and no live owner: killed; relaunching resumes it"
    return "missing", ""


def report(overrides: list[str]) -> tuple[str, Counter]:
    if not any(o.startswith("experiment=") for o in overrides):
        raise ConfigError("status needs experiment=<name> (and the sweep's other overrides)")
    expanded, reuse = jobs(overrides)
    cache: dict[tuple[str, ...], RunConfig] = {}

    def load(ov: list[str]) -> Any:
        key = tuple(ov)
        if key not in cache:
            cache[key] = RunConfig.from_dict(values(ov))
        return cache[key]

    # each job's overrides are complete: no base ones
    planned = sweep.plan_all(expanded, load, reuse)
    queue = queued_runs(sorted({_root(p) for p in planned}))
    counts: Counter = Counter()
    lines = []
    for p in planned:
        st, detail = state(p, queue)
        counts[st] += 1
        lines.append(f"{st:10s} {p.run_id}" + (f"  {detail}" if detail else ""))
    head = f"{len(planned)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return "\n".join([*lines, head]), counts
