"""`lora-repro status experiment=NAME [overrides]`: where every run of a sweep stands, read from the
run folders alone (records and locks; no Slurm needed), with the same overrides as its `train -m`.

Each planned run is one of: done (a success record; its primary metric), failed / oom (the recorded
error's first line), running (its folder's lock is held by a live process), unfinished (a folder
without a record and without a live owner: killed; relaunching resumes it), waiting (its init_from
source has not succeeded), missing (never started).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from lora_repro import lock, record, sweep
from lora_repro.compose import compose, values
from lora_repro.config import RunConfig
from lora_repro.errors import ConfigError


def jobs(overrides: list[str]) -> tuple[list[list[str]], dict[str, str]]:
    """The sweep's jobs (override lists, as the skip_done sweeper expands them) and its init_from."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import Override

    parser = OverridesParser.create()
    given = list(zip(overrides, parser.parse_overrides(overrides), strict=True))
    fixed = [o for o, p in given if not p.is_sweep_override()]
    sweeper = compose(fixed, return_hydra_config=True).hydra.sweeper
    # As Hydra's basic sweeper: the preset's params, then the command line's (same key: it wins).
    by_key = {k: f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()}
    by_key.update({p.get_key_element(): o for o, p in given})
    parsed: list[Override] = parser.parse_overrides(list(by_key.values()))
    grid = BasicSweeper.split_arguments(parsed, None)[0]
    return [list(j) for j in grid], dict(sweeper.get("init_from") or {})


def state(p: sweep.Planned) -> tuple[str, str]:
    """(state, detail) of one planned run from its folder."""
    rec = record.read_json(p.folder / "result.json")
    if p.state == "waiting":
        return "waiting", f"needs {p.needs}"
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
    grid, init_from = jobs(overrides)
    cache: dict[tuple[str, ...], RunConfig] = {}

    def load(ov: list[str]) -> Any:
        key = tuple(ov)
        if key not in cache:
            cache[key] = RunConfig.from_dict(values(ov))
        return cache[key]

    planned = sweep.plan(grid, load, init_from)  # each job's overrides are complete: no base ones
    counts: Counter = Counter()
    lines = []
    for p in planned:
        st, detail = state(p)
        counts[st] += 1
        lines.append(f"{st:10s} {p.run_id}" + (f"  {detail}" if detail else ""))
    head = f"{len(planned)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    return "\n".join([*lines, head]), counts
