"""Sweeps that fill holes: which runs of a sweep still need launching, in what order, and `collect`.

A run's folder and hash come from its config (lora_repro.record), so a sweep can be re-planned at any
time from what is on disk: a run with a success record is done and is not submitted again; a failed,
out-of-memory, killed or never-started run is. The Hydra sweeper `skip_done`
(hydra_plugins/lora_repro_sweeper) expands `hydra.sweeper.params` like Hydra's basic sweeper, asks
`plan` which runs remain, and hands only those to the launcher (basic or submitit Slurm). Each job also
skips itself when it finds a success record (the trainer's own check), so a race cannot double a run.

MNLI init (§5.2, Table 9: MRPC, RTE and STS-B start from the MNLI LoRA checkpoint): the sweeper's
`init_from: {mrpc: mnli, ...}` gives such a run `train.init_from=<its MNLI sibling's folder>/adapter.
safetensors`, the sibling being the same overrides with the task swapped (`sibling`). A run whose
sibling has not succeeded yet waits; when the sibling is in the same sweep, the sweeper launches it in
a later stage, after the first stage returns.

Grids (`hydra.sweeper.grids`, `expand`): a preset whose rows are not one cross product (Table 2: FT,
BitFit and AdapterDrop on RoBERTa-base, adapters at two sizes on RoBERTa-large, ...) lists named grids;
each is crossed on its own (with the preset's shared `params` and the command line's overrides), the
sweep is their union, and `hydra.sweeper.only=[name,...]` picks some. A grid may carry its own
`init_from` (the baselines do not start from MNLI; LoRA does).

Reuse (`hydra.sweeper.reuse: [experiment, ...]`): a run whose config equals, but for `experiment`, a
run that succeeded in one of those experiments (its record in results/<name>.jsonl, or in its folder
under runs_dir when not collected yet) is not trained again: its folder gets a copy of that record,
marked `run.reused_from`. A study's main table takes its seed-0 runs from the seed-0 sweep that chose
its settings, without paying for them twice. A source still queued or running in another launch
cannot be reused yet: the plan warns (`status.warn_in_progress`), and the run trains here unless you
relaunch after that launch has finished. A sweep's own results/<experiment>.jsonl counts the same way:
a run collected in an earlier session, whose folder is gone (a CPU study on machines that lose
runs/), gets its record back, not a retrain.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lora_repro.collect import jsonl_lines
from lora_repro.errors import ConfigError
from lora_repro.record import read_json, write_result

log = logging.getLogger(__name__)

ADAPTER = "adapter.safetensors"


@dataclass
class Planned:
    """One run of a sweep: its overrides (what a launcher gets), folder, and state on disk."""

    overrides: list[str]
    run_id: str
    folder: Path
    state: str  # done (success record) | todo | waiting (its init_from source has not succeeded)
    # | reuse (an identical run of a `reuse` experiment succeeded: `adopt` copies its record)
    needs: str | None = None  # the run id of the source a waiting run needs
    source: dict[str, Any] | None = None  # the record a `reuse` run adopts


Expanded = list[tuple[list[list[str]], dict[str, str]]]  # per grid: its jobs and its init_from


def expand(sweeper: Any, arguments: Sequence[str]) -> Expanded:
    """The jobs of a sweep, grid by grid, as the skip_done sweeper launches them: `sweeper` is the
    composed `hydra.sweeper` node (params, init_from, and optionally grids, only); `arguments` the
    command line's overrides, which win over a grid's values for the same key (Hydra's rule)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    base = dict(sweeper.get("params") or {})
    base_init = dict(sweeper.get("init_from") or {})
    grids = dict(sweeper.get("grids") or {})
    selected: list[tuple[dict, dict]] = [({}, base_init)]
    if grids:
        only = list(sweeper.get("only") or grids)
        for name in only:
            if name not in grids:
                raise ConfigError(
                    f"hydra.sweeper.only: no grid {name!r}; this preset's grids: {', '.join(grids)}"
                )
            extra = set(grids[name]) - {"params", "init_from"}
            if extra:
                raise ConfigError(f"grid {name!r}: unknown key(s) {sorted(extra)}; a grid has "
                                  "params (the sweep values) and optionally init_from")  # fmt: skip
        selected = [
            (dict(grids[n].get("params") or {}), dict(grids[n].get("init_from", base_init) or {}))
            for n in only
        ]
    parser = OverridesParser.create()
    arguments = [a for a in arguments if not a.lstrip("+~").startswith("hydra.")]  # read above
    out: Expanded = []
    seen: set[tuple[str, ...]] = set()
    for params, init_from in selected:
        merged = [f"{k}={v}" for k, v in {**base, **params}.items()]
        parsed = parser.parse_overrides([*merged, *arguments])
        jobs = [list(j) for j in BasicSweeper.split_arguments(parsed, None)[0]]
        jobs = [j for j in jobs if tuple(j) not in seen]
        seen |= {tuple(j) for j in jobs}
        out.append((jobs, init_from))
    return out


def plan_all(
    expanded: Expanded, load: Callable[[list[str]], Any], reuse: Sequence[str] = (),
    results_dir: str | Path = "results",
) -> list[Planned]:  # fmt: skip
    """`plan` over every grid of a sweep; a run that two grids both name is planned once."""
    out: dict[str, Planned] = {}
    for jobs, init_from in expanded:
        for p in plan(jobs, load, init_from, reuse, results_dir):
            out.setdefault(p.run_id, p)
    return list(out.values())


def sibling(overrides: Sequence[str], task: str, src: str) -> list[str]:
    """The same run on task `src`: `task=<task>` becomes `task=<src>` and a per-task settings option
    `recipe=<model>/<task>` becomes `recipe=<model>/<src>` (conf/recipe/ options select model and task).
    With neither among the overrides, `task=<src>` is added."""
    out, swapped = [], False
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+") == "task":
            o, swapped = f"{key}={src}", True
        elif key.lstrip("+") == "recipe" and value.endswith(f"/{task}"):
            o, swapped = f"{key}={value.removesuffix(task)}{src}", True
        out.append(o)
    return out if swapped else [*out, f"task={src}"]


def plan(
    jobs: Sequence[Sequence[str]], load: Callable[[list[str]], Any], init_from: dict[str, str],
    reuse: Sequence[str] = (), results_dir: str | Path = "results",
) -> list[Planned]:  # fmt: skip
    """State of each job (a list of overrides; `load` composes it into a RunConfig). Runs whose task
    is a key of `init_from` get `++train.init_from=` their source sibling's adapter; runs that a
    `reuse` experiment already ran are `reuse`. A folder that holds a different config is a
    ConfigError (identity.prior_state): nothing is launched."""
    from lora_repro import identity
    from lora_repro.data import fingerprint

    out = []
    for ov in jobs:
        ov = list(ov)
        cfg = load(ov)
        needs = None
        src_task = init_from.get(cfg.task.name)
        if src_task and cfg.train.init_from is None:
            src = load(sibling(ov, cfg.task.name, src_task))
            src_dir = identity.run_dir(src)
            adapter = str(src_dir / ADAPTER)
            ov.append(f"++train.init_from='{adapter}'")
            cfg = replace(cfg, train=replace(cfg.train, init_from=adapter))
            if identity.prior_state(src_dir, identity.config_hash(src)) != "done":
                needs = identity.run_id(src)
        folder = identity.run_dir(cfg)
        state = identity.prior_state(folder, identity.config_hash(cfg), fingerprint(cfg.task))
        state = "done" if state == "done" else ("waiting" if needs else "todo")
        own = [cfg.experiment, *reuse]  # its own collected record first: the same run, restored
        source = reusable(cfg, own, results_dir) if state == "todo" else None
        state = "reuse" if source else state
        out.append(Planned(ov, identity.run_id(cfg), folder, state, needs, source))
    return out


_INDEX: dict[tuple[str, float], dict[str, dict[str, Any]]] = {}  # (file, mtime) -> hash -> record
_INDEX_MISSING: set[str] = set()  # warned once


def reusable(cfg: Any, reuse: Sequence[str], results_dir: str | Path) -> dict[str, Any] | None:
    """The success record, in results/<name>.jsonl of a `reuse` experiment (or of cfg's own), of
    the run that `cfg` is but for its experiment; None if none ran."""
    from lora_repro import identity

    for name in reuse:
        path = Path(results_dir) / f"{name}.jsonl"
        if not path.is_file():  # not collected yet: only run folders can be reused (below)
            if name != cfg.experiment and str(path) not in _INDEX_MISSING:
                log.warning("hydra.sweeper.reuse: no %s yet (%r not collected; its finished run "
                            "folders still count)", path, name)  # fmt: skip
                _INDEX_MISSING.add(str(path))
            continue
        key = (str(path), path.stat().st_mtime)
        if key not in _INDEX:
            recs = (json.loads(x) for x in jsonl_lines(path))
            _INDEX[key] = {r["config_hash"]: r for r in recs if r.get("status") == "success"}
        rec = _INDEX[key].get(identity.config_hash(replace(cfg, experiment=name)))
        if rec is not None:
            return rec
    for name in reuse:  # finished but not collected yet: its folder's record
        if name == cfg.experiment:
            continue
        src = replace(cfg, experiment=name)
        rec = read_json(identity.run_dir(src) / "result.json")
        if (
            rec
            and rec.get("status") == "success"
            and rec.get("config_hash") == identity.config_hash(src)
        ):
            return rec
    return None


def restores(p: Planned) -> bool:
    """A `reuse` run whose source is its own record, collected earlier (its folder is gone)."""
    return p.source is not None and p.source["run"].get("id") == p.run_id


def adopt(p: Planned, cfg: Any) -> None:
    """Give a `reuse` run's folder its source's record (this run's config, id and folder; the
    source's metrics and cost; `run.reused_from`), so it is done and `collect` gathers it."""
    from lora_repro import identity

    assert p.source is not None
    chash = identity.config_hash(cfg)
    p.folder.mkdir(parents=True, exist_ok=True)
    identity.write_config(p.folder, cfg, chash)
    if restores(p):  # this run's own record, collected earlier: write it back as it was
        write_result(p.folder, p.source)
        return
    run = {**p.source["run"], "id": p.run_id, "experiment": cfg.experiment,
           "folder": str(p.folder), "reused_from": p.source["run"].get("folder")}  # fmt: skip
    write_result(p.folder, {**p.source, "run": run, "config": cfg.to_dict(), "config_hash": chash})


def outcome(p: Planned) -> str:
    """What the run's folder says now: success | failed | oom | no record (killed, never started)."""
    rec = read_json(p.folder / "result.json")
    return rec.get("status", "no record") if rec else "no record"


def explain(p: Planned) -> str:
    """A run that did not succeed, in one line: its status and the recorded error."""
    if p.state == "waiting":
        return "waiting"
    rec = read_json(p.folder / "result.json") or {}
    error = str(rec.get("error") or "").strip().splitlines()
    return rec.get("status", "no record (killed, or never started)") + (
        f": {error[0]}" if error else ""
    )


def summary(planned: Sequence[Planned], before: dict[str, str]) -> str:
    """One line: how many runs were already done, and how the launched ones ended."""
    counts = Counter(
        "done before" if before.get(p.run_id) == "done" else
        ("waiting" if p.state == "waiting" else outcome(p))
        for p in planned
    )  # fmt: skip
    return f"{len(planned)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def plan_summary(planned: Sequence[Planned]) -> str:
    """One line before launching: how many runs are done, to run, waiting."""
    names = {"done": "done", "todo": "to run", "waiting": "waiting", "reuse": "to reuse"}
    counts = Counter(names[p.state] for p in planned)
    return f"{len(planned)} runs: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))


def plan_lines(planned: Sequence[Planned]) -> str:
    """The runs to do, one shell-quoted override line each (slurm/array.sbatch reads these)."""
    return "".join(" ".join(map(shlex.quote, p.overrides)) + "\n" for p in planned)
