"""The one training loop, for every method and task. Read it top to bottom (nanoGPT-style).

`run(cfg)`: derive the run folder, skip a finished identical run, build data, model and method, train
with AdamW and a linear warmup/decay schedule, evaluate each epoch (or every N steps), keep the best
evaluation (the paper reports each run at its best epoch, Table 2), checkpoint so a killed run resumes
bit-identically, run the task's after-fit hook (NLG: beam-search decode with the best weights) and
write result.json. The same entry point under `torchrun` trains with DDP.

Batch semantics: `train.batch_size` is the global batch of one optimizer step. It is split evenly
over processes and then over `grad_accum` micro-batches, and every loss is normalised by the global
batch's example (or target-token) count, so 1 process, N processes and accumulation compute the same
update up to float rounding.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lora_repro import checkpoint, parallel
from lora_repro.batching import epoch_order, lengths
from lora_repro.build import build
from lora_repro.config import RunConfig
from lora_repro.distributed import Runtime, gather, on_main
from lora_repro.errors import ConfigError
from lora_repro.evaluate import better
from lora_repro.job import FitResult, Job, after_fit, make_record
from lora_repro.lock import RunLock
from lora_repro.losses import loss_sum, n_targets
from lora_repro.optim import linear_schedule, param_groups
from lora_repro.session import Session

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training raised; the `failed`/`oom` record is already written. The CLI exits non-zero."""


# --- the loop's state and result --------------------------------------------------------------------


@dataclass
class LoopState:
    """Where the loop is; checkpointed with the weights, so a resumed run continues exactly here."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batch: int = 0  # batches taken in this epoch
    best: dict[str, Any] | None = None  # the best evaluation's history row
    last: dict[str, Any] | None = None  # the latest evaluation's
    history: int = 0  # history.jsonl's byte length at the checkpoint (a resume cuts what follows)
    train_time: float = 0.0  # running sums survive a resume too
    cpu_time: float = 0.0  # CPU seconds of every attempt up to this checkpoint (the record's total)
    tokens: int = 0
    run_loss: float = 0.0  # training loss since the last log line
    run_n: int = 0

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(self)}
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)


# --- the loop ---------------------------------------------------------------------------------------


def fit(job: Job) -> FitResult:
    """Train the built model on its data; return the best and final evaluations and the cost."""
    cfg, t, rt, s = job.cfg, job.cfg.train, job.rt, job.session
    data, raw = job.built.data, job.built.model
    model = parallel.wrap(raw, t.strategy, rt, cfg.model.family)  # DDP, or raw sharded (FSDP)
    micro = t.batch_size // (rt.world * t.grad_accum)  # build() checked that it divides
    # Drop the last partial batch: every step then sees the same global batch size, and the per-epoch
    # reshuffle means no example is left out for good.
    per_epoch = len(data.train) // t.batch_size
    total = t.max_steps or max(1, round(t.epochs * per_epoch))
    warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * total)
    # The fused kernel (CPU and CUDA): one pass over each tensor instead of foreach's several; on a CPU
    # core it steps 134.5M fp32 parameters in 0.08 s instead of 0.50 s, and matches foreach to fp32
    # rounding. Sharded (FSDP) parameters keep foreach.
    fused = not parallel.sharded(raw) and rt.device.type in ("cpu", "cuda")
    opt = torch.optim.AdamW(param_groups(raw, t.weight_decay), lr=t.lr, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=rt.dtype == torch.float16)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    sizes = lengths(data.train) if t.group_by_length else None

    # Resume: the newest complete checkpoint restores weights, optimizer, schedule, RNG and position.
    pos = LoopState()
    ckpt_dir = s.folder / "checkpoint"
    found = on_main(lambda: checkpoint.latest(ckpt_dir), rt.rank, rt.world)
    if found is None and rt.main:
        s.history.truncate(0)  # rows of an attempt killed before its first checkpoint
    if found is not None:
        portable = parallel.PortableOptimizer(raw, opt)  # any strategy or process count
        state = checkpoint.load(
            found,
            raw,
            {"optimizer": portable, "scheduler": sched, "scaler": scaler, "position": pos},
        )
        rngs = state["rng"]  # one per process of the run that wrote it
        if len(rngs) != rt.world:  # resumed on another process count: same data order, new RNGs
            log.warning("checkpoint written by %d process(es), resumed on %d: dropout draws differ "
                        "from an uninterrupted run", len(rngs), rt.world)  # fmt: skip
        checkpoint.set_rng_state(rngs[rt.rank % len(rngs)])
        if rt.main:
            s.history.truncate(pos.history)
        job.resumed_from = pos.step
        job.prior_cpu = pos.cpu_time  # CPU spent after that checkpoint by a killed attempt is lost
        log.info("resuming from %s (step %d of %d)", found, pos.step, total)

    def save_checkpoint() -> None:
        rngs = gather(checkpoint.rng_state(), rt.world)
        # full tensors and optimizer state, keyed by name: rank 0 writes them, but when the model
        # is sharded they are collectives every rank takes part in
        if rt.main or parallel.sharded(raw):
            weights, optim = parallel.trainable_state(raw), parallel.optimizer_state(raw, opt)
        if rt.main:
            pos.history = s.history.offset()
            pos.cpu_time = job.prior_cpu + time.process_time() - s.cpu0
            objs = {"optimizer": optim, "scheduler": sched, "scaler": scaler, "position": pos}
            checkpoint.save(ckpt_dir, pos.step, weights, objs, rngs)

    def evaluate_and_track() -> None:
        metrics = job.evaluate()
        row = {"event": "eval", "step": pos.step, "epoch": pos.step / per_epoch, **metrics}
        s.log_row(row)
        key = data.selected_by  # NLG: validation loss; its BLEU comes from the after-fit decode
        if better(key, metrics[key], (pos.best or {}).get(key)):
            pos.best = row
            job.save_adapter()  # adapter.safetensors always holds the best evaluation's weights
        pos.last = row

    bar = job.progress(total=total, initial=pos.step, desc="train")
    window = (pos.train_time, pos.tokens)  # (training time, tokens) at the last log line
    model.train()
    while pos.step < total:
        # A fresh order each epoch from (seed, epoch): resuming mid-epoch regenerates it exactly.
        order = epoch_order(len(data.train), cfg.seed, pos.epoch, t.batch_size, sizes)
        while pos.step < total:
            batch_idx = order[pos.batch * t.batch_size : (pos.batch + 1) * t.batch_size]
            tic = time.perf_counter()
            denom = (
                sum(n_targets(data.train[i], data.head) for i in batch_idx)
                if data.head == "lm"
                else t.batch_size
            )
            step_loss = torch.zeros((), device=rt.device)
            for k in range(t.grad_accum):
                start = (rt.rank * t.grad_accum + k) * micro
                batch = rt.to_device(
                    data.collate([data.train[i] for i in batch_idx[start : start + micro]])
                )
                pos.tokens += int(batch["attention_mask"].sum()) * rt.world
                sync = k == t.grad_accum - 1 or rt.world == 1
                with parallel.no_sync(model, sync):  # gradients reduced once per step
                    with rt.autocast():
                        logits, labels = job.built.forward(model, batch)
                        loss = loss_sum(logits, labels, data.head, cfg.task.label_smoothing)
                    # DDP and FSDP average gradients over processes: times world, the result is sum / denom.
                    scaler.scale(loss * rt.world / max(1, denom)).backward()
                step_loss += loss.detach()
            if t.max_grad_norm is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(trainable, t.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if rt.world > 1:
                dist.all_reduce(step_loss)
            value = step_loss.item() / max(1, denom)
            if not math.isfinite(value):  # diverged: a failed run, never a "success" with NaNs
                raise FloatingPointError(f"loss became {value} at step {pos.step + 1}")
            pos.run_loss += value
            pos.run_n += 1
            pos.train_time += time.perf_counter() - tic
            pos.step += 1
            pos.batch += 1
            bar.update(1)
            if pos.step % cfg.logging.log_every == 0 or pos.step == total:
                loss = pos.run_loss / pos.run_n
                epoch, lr = pos.step / per_epoch, sched.get_last_lr()[0]
                s.log_row(
                    {"event": "train", "step": pos.step, "epoch": epoch, "loss": loss, "lr": lr}
                )
                bar.set_postfix(loss=f"{loss:.4f}")
                # log.txt and Slurm logs show progress: off a terminal, tqdm is invisible
                dt, dn = pos.train_time - window[0], pos.tokens - window[1]
                left = (total - pos.step) * pos.train_time / pos.step  # training time; evals extra
                log.info(
                    "step %d/%d (epoch %.2f): loss %.4f, lr %.2e, %.0f tokens/s, %s left",
                    pos.step, total, epoch, loss, lr, dn / max(dt, 1e-9), _duration(left),
                )  # fmt: skip
                window = (pos.train_time, pos.tokens)
                pos.run_loss, pos.run_n = 0.0, 0
            end_of_epoch = pos.batch == per_epoch
            if end_of_epoch:
                pos.epoch, pos.batch = pos.epoch + 1, 0
            if (t.eval_every and pos.step % t.eval_every == 0) or (
                not t.eval_every and end_of_epoch
            ):
                evaluate_and_track()
            elif pos.step == total:
                evaluate_and_track()  # a run that ends mid-epoch is still scored at its end
            if (t.checkpoint_every and pos.step % t.checkpoint_every == 0) or end_of_epoch:
                save_checkpoint()
            if end_of_epoch:
                break  # a new order for the next epoch
    bar.close()
    return FitResult(total, per_epoch, pos.best, pos.last, pos.train_time, pos.tokens)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def run(cfg: RunConfig, record_setup_errors: bool = False) -> dict[str, Any]:
    """Train one config into its run folder and write its record (see record.py); return the record
    as written. An identical finished run is skipped; a ConfigError in setup writes nothing (with
    `record_setup_errors`, as a sweep's runs do: a `failed` record, then the ConfigError); any later
    failure writes a `failed` (or `oom`) record and raises RunFailed."""
    rt = Runtime.start(cfg.train.device, cfg.train.precision)
    s = Session(cfg, rt)
    lock = RunLock(s.folder)
    if s.finished is None:  # one writer per folder: a second launch is refused, not raced
        try:
            on_main(lambda: lock.acquire() and None, rt.rank, rt.world)
            s.check_prior()  # under the lock: another launch may have finished it meanwhile
        except ConfigError:
            s.close()
            raise
    if s.finished is not None:
        log.info("skip: %s already finished with this config (hash %s)", s.folder, s.chash)
        s.clean_leftovers()
        lock.release()
        s.close()
        return {**s.finished, "skipped": True}
    s.clean_leftovers()
    failure: BaseException | None = None
    job, result = None, None
    try:
        job = Job(cfg, rt, build(cfg, rt.device, rt.world), s)
    except ConfigError as exc:
        if record_setup_errors:
            s.open_folder()
            s.finish(make_record(cfg, s, None, None, exc))
            lock.release()
        else:
            lock.release(remove_empty=True)
            s.close()
        raise
    except Exception as exc:  # e.g. out of memory while moving the model to the GPU
        failure = exc
    s.open_folder()
    if job is not None:
        try:
            result = after_fit(job, fit(job))
        except Exception as exc:
            failure = exc
        except KeyboardInterrupt:  # no record: relaunching resumes from the last checkpoint
            lock.release()
            s.close()
            raise
    rec = make_record(cfg, s, job, result, failure)
    s.finish(rec)
    lock.release()
    if failure is not None:
        raise RunFailed(rec.error) from failure
    return rec.to_dict()
