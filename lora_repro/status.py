"""`lora-repro status experiment=NAME [overrides]`: where every run of a sweep stands, read from the
run folders alone (records and locks; no Slurm needed), with the same overrides as its `train -m`.

Each planned run is one of: done (a success record; its primary metric), failed / oom (the recorded
error's first line), running (its folder's lock is held by a live process), unfinished (a folder
without a record and without a live owner: killed; relaunching resumes it), waiting (its init_from
source has not succeeded), reusable (an identical run of a `hydra.sweeper.reuse` experiment
succeeded: the next launch copies its record), missing (never started).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lora_repro import lock, record, sweep
from lora_repro.compose import compose, values
from lora_repro.config import RunConfig
from lora_repro.errors import ConfigError


def jobs(overrides: list[str]) -> tuple[sweep.Expanded, list[str]]:
    """The sweep's jobs, grid by grid with each grid's init_from, as the skip_done sweeper expands
    them (sweep.expand), and its `reuse` experiments."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o for o, p in zip(overrides, parsed, strict=True) if not p.is_sweep_override()]
    sweeper = compose(fixed, return_hydra_config=True).hydra.sweeper
    return sweep.expand(sweeper, overrides), list(sweeper.get("reuse") or [])


def state(p: sweep.Planned) -> tuple[str, str]:
    """(state, detail) of one planned run from its folder."""
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
    counts: Counter = Counter()
    lines = []
    for p in planned:
        st, detail = state(p)
        counts[st] += 1
        lines.append(f"{st:10s} {p.run_id}" + (f"  {detail}" if detail else ""))
    head = f"{len(planned)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return "\n".join([*lines, head]), counts
