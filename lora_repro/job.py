"""One training job: the config, this process's Runtime, the built model and data, and the run
folder's Session; what its fit returns (FitResult); the task's after-fit hook; and the RunRecord
assembled from all of it."""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import torch
import torch.distributed as dist

from lora_repro import identity, record
from lora_repro.build import Built
from lora_repro.config import RunConfig
from lora_repro.distributed import Runtime
from lora_repro.evaluate import evaluate
from lora_repro.session import Session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitResult:
    steps: int
    per_epoch: int
    best: dict[str, Any] | None
    last: dict[str, Any] | None
    train_time: float
    tokens: int


@dataclass
class Job:
    """What the loop works on: the config, this process, the built run, and its folder."""

    cfg: RunConfig
    rt: Runtime
    built: Built
    session: Session
    resumed_from: int | None = None
    prior_cpu: float = 0.0  # CPU seconds of earlier attempts, up to the checkpoint resumed from

    def progress(self, *args: Any, **kwargs: Any) -> Any:
        from tqdm import tqdm

        show = self.cfg.logging.progress and self.rt.main and sys.stderr.isatty()
        return tqdm(*args, disable=not show, dynamic_ncols=True, **kwargs)

    def evaluate(self) -> dict[str, float]:
        b = self.built
        return evaluate(
            b.model, b.data, self.rt, self.cfg.train.eval_batch_size, b.forward, self.progress
        )

    def save_adapter(self) -> None:
        """adapter.safetensors + adapter.json in the run folder (weights/state.py's format), written
        by rank 0. Every rank calls it: a sharded model's tensors are gathered first."""
        from lora_repro import parallel
        from lora_repro.weights import state

        cfg, model = self.cfg, self.built.model
        tensors = parallel.trainable_state(model) if parallel.sharded(model) else None
        if self.rt.main:
            state.save_adapter(
                model, self.session.folder, cfg.method, cfg.model,
                head=self.built.data.head, task=cfg.task.name, tensors=tensors,
            )  # fmt: skip


def after_fit(job: Job, result: FitResult) -> FitResult:
    """The task's after-fit hook (NLG: decode `task.generate_split` with beam search, Table 11), run
    on the best evaluation's weights (adapter.safetensors, chosen by validation loss). Its scores
    join the best evaluation as `<split>/<metric>`, so the record's primary metric is the decode's
    BLEU; the result comes back as a new value."""
    hook = job.built.data.after_fit
    if hook is None:
        return result
    best = result.best or {}
    if job.rt.main:
        from lora_repro import parallel
        from lora_repro.build import make_model
        from lora_repro.weights import state

        cfg, b = job.cfg, job.built
        model = b.model
        if parallel.sharded(model):  # beam search on rank 0 alone: an unsharded copy of the base
            model = make_model(cfg, b.data, job.rt.device)
        name = getattr(cfg.method, "adapter_name", None)
        state.load_adapter(model, job.session.folder, cfg.model.family, cfg.model, name)
        with job.rt.autocast():  # the run's precision: bf16 decodes ~2x faster on CPU too
            named = hook(model, job.session.folder, cfg.train.eval_batch_size)
        job.session.log_row(
            {"event": "generate", "step": result.steps, "best_step": best.get("step"), **named}
        )
        log.info("after fit, with the best weights (step %s): %s", best.get("step"), named)
        best = {**best, **named}
    if job.rt.world > 1:
        dist.barrier()
    return dataclasses.replace(result, best=best)


def curve(s: Session) -> list[dict[str, float]]:
    """The run's evaluations, in order (a resumed run's history was cut back to its checkpoint)."""
    evals = (r for r in s.history.rows() if r.get("event") == "eval")
    return [{k: v for k, v in r.items() if k != "event"} for r in evals]


def make_record(
    cfg: RunConfig, s: Session, job: Job | None, result: FitResult | None,
    failure: BaseException | None,
) -> record.RunRecord:  # fmt: skip
    """The run's record from what the run produced (any of it may be missing after a failure)."""
    status = "success" if failure is None else ("oom" if record.is_oom(failure) else "failed")
    data = job.built.data if job is not None else None
    best = (result.best if result else None) or {}
    primary = data.primary_metric if data is not None else None
    named = lambda row: {k: v for k, v in (row or {}).items() if "/" in k}  # noqa: E731 (<split>/<name>)
    # CPU time next to wall time: a shared machine inflates the latter. It adds the earlier attempts'
    # (a run parked between sessions resumes several times); wall time is this attempt's.
    wall = time.time() - s.started
    cpu = (job.prior_cpu if job else 0.0) + time.process_time() - s.cpu0
    adapter = s.folder / "adapter.safetensors"
    adapter_bytes = adapter.stat().st_size if status == "success" and adapter.exists() else 0
    if s.rt.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(s.rt.device), "cuda_max_allocated"
    else:  # Linux reports kilobytes
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_max_rss"
    task = record.TaskInfo(name=cfg.task.name, data_fingerprint=s.data_fingerprint)
    if data is not None:
        sizes = {k: len(v) for k, v in data.evals.items()}
        task = record.TaskInfo(data.name, data.version, len(data.train), sizes, s.data_fingerprint)
    train_time = result.train_time if result else None
    return record.RunRecord(
        status=status,
        error=None if failure is None else f"{type(failure).__name__}: {failure}"[:2000],
        run=record.RunInfo(
            id=identity.run_id(cfg),
            experiment=cfg.experiment,
            folder=str(s.folder),
            started=datetime.fromtimestamp(s.started, timezone.utc).isoformat(timespec="seconds"),
            wall_time_s=wall,
            resumed_from_step=job.resumed_from if job else None,
        ),
        config=cfg.to_dict(),
        config_hash=s.chash,
        task=task,
        metrics=record.Metrics(
            primary_metric=primary,
            selected_by=data.selected_by if data is not None else None,
            primary=best.get(primary),
            best_step=best.get("step"),
            best_epoch=best.get("epoch"),
            best=named(best),
            final=named(result.last if result else None),
            curve=curve(s),
        ),
        cost=record.Cost(
            **(job.built.counts if job else {}),
            peak_memory_bytes=peak,
            peak_memory_kind=kind,
            steps=result.steps if result else None,
            train_time_s=train_time,
            tokens_per_s=result.tokens / train_time if train_time else None,
            wall_time_s=wall,
            cpu_time_s=cpu,
            adapter_bytes=adapter_bytes,
        ),
        environment=record.environment(
            s.rt.device, str(s.rt.dtype).removeprefix("torch."), s.rt.world
        ),
    )
