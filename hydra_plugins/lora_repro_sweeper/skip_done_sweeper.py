"""Hydra sweeper `skip_done`: Hydra's basic sweeper (same `hydra.sweeper.params`, same grid), except
that only runs without a success record are handed to the launcher, in stages when some runs start
from another run's adapter (MNLI init). The logic lives in lora_repro.sweep; this is the Hydra seam
(Hydra only loads sweepers from the `hydra_plugins` namespace package).

    lora-repro train -m experiment=table2_glue                    # launch what is missing
    lora-repro train -m experiment=table2_glue hydra.sweeper.dry_run=true   # only print the plan
    lora-repro train -m experiment=table2_glue hydra.sweeper.plan_file=todo.txt  # for slurm/array.sbatch
"""

# No `from __future__ import annotations` here: Hydra executes plugin modules without registering them
# in sys.modules, and dataclasses cannot resolve string annotations then.
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional  # noqa: UP035 (OmegaConf structured-config types)

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf, open_dict

log = logging.getLogger("lora_repro.sweep")


@dataclass
class SkipDoneSweeperConf:
    _target_: str = "hydra_plugins.lora_repro_sweeper.skip_done_sweeper.SkipDoneSweeper"
    max_batch_size: Optional[int] = None  # noqa: UP045 (runs per launch; None: a stage at once)
    params: Optional[Dict[str, str]] = None  # noqa: UP006, UP045 (the grid, as Hydra's basic sweeper)
    init_from: Dict[str, str] = field(default_factory=dict)  # noqa: UP006 (task -> source task)
    grids: Optional[Dict[str, Any]] = None  # noqa: UP006, UP045 (named grids, unioned: sweep.expand)
    only: Optional[List[str]] = None  # noqa: UP006, UP045 (the grids to run; None: all)
    reuse: List[str] = field(default_factory=list)  # noqa: UP006 (experiments whose runs count here)
    dry_run: bool = False  # print the plan, launch nothing
    plan_file: Optional[str] = None  # noqa: UP045 (write the runs to do, one override line each)


# conf/cluster/slurm.yaml: `cluster.tasks_per_node: null` is one task (process) per GPU, or 1 on CPU.
# Registered here because Hydra imports every hydra_plugins module before it composes a config.
def _tasks_per_node(tasks: Optional[int], gpus: Optional[int]) -> int:  # noqa: UP045
    from lora_repro.estimate import (
        tasks_per_node,
    )  # imported when a launcher resolves, not at start

    return tasks_per_node(tasks, gpus)


if not OmegaConf.has_resolver("lora_repro_tasks"):
    OmegaConf.register_new_resolver("lora_repro_tasks", _tasks_per_node)

ConfigStore.instance().store(
    group="hydra/sweeper", name="skip_done", node=SkipDoneSweeperConf, provider="lora_repro"
)


class SkipDoneSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: Optional[int] = None,  # noqa: UP045
        params: Optional[Dict[str, str]] = None,  # noqa: UP006, UP045
        init_from: Optional[Dict[str, str]] = None,  # noqa: UP006, UP045
        grids: Optional[Dict[str, Any]] = None,  # noqa: UP006, UP045
        only: Optional[List[str]] = None,  # noqa: UP006, UP045
        reuse: Optional[List[str]] = None,  # noqa: UP006, UP045
        dry_run: bool = False,
        plan_file: Optional[str] = None,  # noqa: UP045
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.init_from = dict(init_from or {})
        self.grids = grids
        self.only = only
        self.reuse = list(reuse or [])
        self.dry_run = dry_run
        self.plan_file = plan_file
        self._configs: Dict[tuple, Any] = {}  # noqa: UP006 (overrides -> RunConfig; re-planning is free)

    def _load(self, overrides: List[str]) -> Any:  # noqa: UP006
        """One job's RunConfig, composed exactly as the launcher will compose it."""
        from lora_repro.config import RunConfig

        assert self.hydra_context is not None and self.config is not None
        key = tuple(overrides)
        if key not in self._configs:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(cfg):
                del cfg["hydra"]
            self._configs[key] = RunConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))
        return self._configs[key]

    def sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        """Plan, then launch in stages. Bad input (an unknown grid, a folder holding another config)
        is one `error:` line and exit status 2, as everywhere else, not Hydra's traceback."""
        import sys

        from lora_repro.errors import ConfigError

        try:
            return self._sweep(arguments)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None

    def _sweep(self, arguments: List[str]) -> Any:  # noqa: UP006
        from lora_repro import sweep
        from lora_repro.atomic import write_atomic
        from lora_repro.status import queued, warn_in_progress

        assert self.hydra_context is not None and self.launcher is not None
        assert self.config is not None
        expanded = sweep.expand(
            {"params": self.params, "init_from": self.init_from, "grids": self.grids,
             "only": self.only},
            arguments,
        )  # fmt: skip
        log.info("planning %d runs (composing each config)", sum(len(j) for j, _ in expanded))
        planned = sweep.plan_all(expanded, self._load, self.reuse)
        before = {p.run_id: p.state for p in planned}
        log.info("sweep plan: %s", sweep.plan_summary(planned))
        warn_in_progress(planned, self.reuse, self._load)
        if self.plan_file is not None or self.dry_run:
            todo = [p for p in planned if p.state == "todo"]
            for p in planned:
                log.info("  %-7s %s%s", p.state, p.run_id, f" (after {p.needs})" if p.needs else "")
            if self.plan_file is not None:
                write_atomic(self.plan_file, sweep.plan_lines(todo))
                log.info("wrote %d runs to %s", len(todo), self.plan_file)
            return []
        for p in planned:
            if p.state == "reuse":
                sweep.adopt(p, self._load(p.overrides))
                ran = p.source["run"].get("id")  # type: ignore[index]
                how = "restored from results/" if sweep.restores(p) else f"reused: it ran as {ran}"
                log.info("%s %s", how, p.run_id)
        planned = sweep.plan_all(expanded, self._load, self.reuse)

        # as Hydra's basic sweeper does: the sweep's config next to its outputs
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns, launched, idx = [], set(), 0
        # while this waits on its jobs, `lora-repro status` reads the ones not started as queued
        with queued([p for p in planned if p.state in ("todo", "waiting")]):
            while True:  # stages: a run waiting on another run's adapter goes once that succeeded
                todo = [p for p in planned if p.state == "todo" and p.run_id not in launched]
                if not todo:
                    break
                size = self.max_batch_size or len(todo)
                for i in range(0, len(todo), size):
                    batch = todo[i : i + size]
                    returns.append(
                        self.launcher.launch([p.overrides for p in batch], initial_job_idx=idx)
                    )
                    idx += len(batch)
                launched |= {p.run_id for p in todo}
                planned = sweep.plan_all(expanded, self._load, self.reuse)
        for r in (r for batch in returns for r in batch):
            if r.status.name == "FAILED":  # a crash outside the trainer's own failure records
                log.error("job %s raised: %r", r.overrides, r._return_value)
        done = sweep.summary(planned, before)
        log.info("sweep: %s", done)
        bad = [p for p in planned if before[p.run_id] != "done" and sweep.outcome(p) != "success"]
        for p in bad:
            log.error("  %s: %s", p.run_id, sweep.explain(p))
        if bad:  # a non-zero exit (the CLI returns SystemExit's code); relaunching retries these
            log.error("%d run(s) did not succeed; the same command relaunches only those", len(bad))
            raise SystemExit(1)
        return returns
