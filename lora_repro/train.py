"""The one training loop, for every method and task. Read it top to bottom (nanoGPT-style).

`run(cfg)`: derive the run folder, skip a finished identical run, build data, model and method, train
with AdamW and a linear warmup/decay schedule, evaluate each epoch (or every N steps), keep the best
evaluation (the paper reports each run at its best epoch, Table 2), checkpoint so a killed run resumes
bit-identically, and write result.json. The same entry point under `torchrun` trains with DDP.

Batch semantics: `train.batch_size` is the global batch of one optimizer step. It is split evenly
over processes and then over `grad_accum` micro-batches, and every loss is normalised by the global
batch's example (or target-token) count, so 1 process, N processes and accumulation compute the same
update up to float rounding.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from lora_repro import checkpoint
from lora_repro.config import RunConfig
from lora_repro.distributed import gather, on_main
from lora_repro.errors import ConfigError
from lora_repro.losses import IGNORE_INDEX, lm_loss
from lora_repro.session import Session

log = logging.getLogger(__name__)


class RunFailed(RuntimeError):
    """Training raised; the `failed`/`oom` record is already written. The CLI exits non-zero."""


# --- losses -----------------------------------------------------------------------------------------


def loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, head: str, smoothing: float
) -> torch.Tensor:
    """Summed loss of a micro-batch: CE for classes, MSE for one regression output (STS-B), shifted
    CE for language modelling."""
    if head == "lm":
        return lm_loss(logits, labels, smoothing, reduction="sum")
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def n_targets(example: dict[str, Any], head: str) -> int:
    """What the loss averages over: examples, or for LM the labelled tokens after the shift."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX) if head == "lm" else 1


# --- optimisation -----------------------------------------------------------------------------------


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters only; no weight decay on biases and LayerNorm weights (as run_glue and
    the released LoRA code). LoRA's A and B do decay."""
    norms = {
        id(p)
        for m in model.modules()
        if "norm" in type(m).__name__.lower()
        for p in m.parameters(False)
    }
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if name.endswith("bias") or id(p) in norms else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def linear_schedule(warmup: int, total: int):
    """Linear warmup from 0 then linear decay to 0 (Table 9/11), as transformers' linear schedule."""

    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


# --- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, s: Session) -> dict[str, float]:
    """Metrics on every eval split, `<split>/<metric>`; LM tasks report the token-mean loss. Each rank
    scores a strided shard; predictions are gathered so every rank computes the same numbers."""
    model.eval()
    out: dict[str, float] = {}
    for split, examples in data.evals.items():
        idx = list(range(s.rank, len(examples), s.world))
        preds, labels, total, count = [], [], 0.0, 0
        for i in s.tqdm(
            range(0, len(idx), s.cfg.train.eval_batch_size), desc=f"eval {split}", leave=False
        ):
            batch = s.to_device(
                data.collate([examples[j] for j in idx[i : i + s.cfg.train.eval_batch_size]])
            )
            with s.autocast():
                logits = model(**s.inputs(batch)).logits
            if data.head == "lm":
                total += lm_loss(logits, batch["labels"], 0.0, reduction="sum").item()
                count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            else:
                preds.append(logits.float().cpu())
                labels.append(batch["labels"].cpu())
        if data.head == "lm":
            parts = gather((total, count), s.world)
            out[f"{split}/loss"] = sum(p[0] for p in parts) / max(1, sum(p[1] for p in parts))
        else:
            parts = gather(
                (torch.cat(preds) if preds else None, torch.cat(labels) if labels else None),
                s.world,
            )
            p = torch.cat([a for a, _ in parts if a is not None])
            y = torch.cat([b for _, b in parts if b is not None])
            out.update({f"{split}/{k}": float(v) for k, v in data.metrics(p, y).items()})
    model.train()
    return out


def better(metric: str, new: float, old: float | None) -> bool:
    """Losses and perplexities fall as models improve; every GLUE score rises."""
    if old is None or old != old:  # nothing yet, or NaN
        return True
    return new < old if metric.endswith(("loss", "perplexity")) else new > old


# --- the loop ---------------------------------------------------------------------------------------


def fit(s: Session) -> dict[str, Any]:
    """Train `s.model` on `s.data`; return the best and final evaluations and the cost."""
    cfg, t, data = s.cfg, s.cfg.train, s.data
    raw = s.model
    model = nn.parallel.DistributedDataParallel(raw) if s.world > 1 else raw
    micro = t.batch_size // (s.world * t.grad_accum)  # Session.build checked that it divides
    # Drop the last partial batch: every step then sees the same global batch size, and the per-epoch
    # reshuffle means no example is left out for good.
    per_epoch = len(data.train) // t.batch_size
    total = t.max_steps or max(1, round(t.epochs * per_epoch))
    warmup = t.warmup_steps if t.warmup_steps is not None else int(t.warmup_ratio * total)
    opt = torch.optim.AdamW(param_groups(raw, t.weight_decay), lr=t.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(warmup, total))
    scaler = torch.amp.GradScaler("cuda", enabled=s.dtype == torch.float16)
    trainable = [p for p in raw.parameters() if p.requires_grad]

    # Resume: the newest complete checkpoint restores weights, optimizer, schedule, RNG and position.
    pos: dict[str, Any] = dict(step=0, epoch=0, batch=0, best=None, last=None, history=0)
    pos.update(train_time=0.0, tokens=0, run_loss=0.0, run_n=0)  # running sums survive a resume too
    ckpt_dir = s.folder / "checkpoint"
    found = on_main(lambda: checkpoint.latest(ckpt_dir), s.rank, s.world)
    if found is not None:
        state = checkpoint.load(
            found, raw, {"optimizer": opt, "scheduler": sched, "scaler": scaler}
        )
        pos = state["position"]
        checkpoint.set_rng_state(state["rng"][s.rank])
        if s.rank == 0:
            s.history.truncate(pos["history"])
        s.resumed_from = pos["step"]
        log.info("resuming from %s (step %d of %d)", found, pos["step"], total)

    def save_checkpoint() -> None:
        rngs = gather(checkpoint.rng_state(), s.world)
        if s.rank == 0:
            pos["history"] = s.history.offset()
            objs = {"optimizer": opt, "scheduler": sched, "scaler": scaler, "position": dict(pos)}
            checkpoint.save(ckpt_dir, pos["step"], raw, objs, rngs)

    def evaluate_and_track() -> None:
        metrics = evaluate(raw, data, s)
        row = {"event": "eval", "step": pos["step"], "epoch": pos["step"] / per_epoch, **metrics}
        s.log_row(row)
        key = data.selected_by  # NLG: validation loss; its BLEU comes from after_training's decode
        if better(key, metrics[key], (pos["best"] or {}).get(key)):
            pos["best"] = row
            if s.rank == 0:
                s.save_adapter()  # adapter.safetensors always holds the best evaluation's weights
        pos["last"] = row

    bar = s.tqdm(total=total, initial=pos["step"], desc="train")
    model.train()
    while pos["step"] < total:
        # A fresh order each epoch from (seed, epoch): resuming mid-epoch regenerates it exactly.
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + pos["epoch"])
        order = torch.randperm(len(data.train), generator=gen).tolist()
        while pos["step"] < total:
            batch_idx = order[pos["batch"] * t.batch_size : (pos["batch"] + 1) * t.batch_size]
            tic = time.perf_counter()
            denom = (
                sum(n_targets(data.train[i], data.head) for i in batch_idx)
                if data.head == "lm"
                else t.batch_size
            )
            step_loss = torch.zeros((), device=s.device)
            for k in range(t.grad_accum):
                start = (s.rank * t.grad_accum + k) * micro
                batch = s.to_device(
                    data.collate([data.train[i] for i in batch_idx[start : start + micro]])
                )
                pos["tokens"] += int(batch["attention_mask"].sum()) * s.world
                sync = k == t.grad_accum - 1 or s.world == 1
                with contextlib.nullcontext() if sync else model.no_sync():  # DDP: sync once
                    with s.autocast():
                        logits = model(**s.inputs(batch)).logits
                        loss = loss_sum(
                            logits, batch["labels"], data.head, cfg.task.label_smoothing
                        )
                    # DDP averages gradients over processes: times world, the result is sum / denom.
                    scaler.scale(loss * s.world / max(1, denom)).backward()
                step_loss += loss.detach()
            if t.max_grad_norm is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(trainable, t.max_grad_norm)
            scaler.step(opt)
            scaler.update()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if s.world > 1:
                dist.all_reduce(step_loss)
            pos["run_loss"] += step_loss.item() / max(1, denom)
            pos["run_n"] += 1
            pos["train_time"] += time.perf_counter() - tic
            pos["step"] += 1
            pos["batch"] += 1
            bar.update(1)
            if pos["step"] % cfg.logging.log_every == 0 or pos["step"] == total:
                loss = pos["run_loss"] / pos["run_n"]
                epoch, lr = pos["step"] / per_epoch, sched.get_last_lr()[0]
                s.log_row(
                    {"event": "train", "step": pos["step"], "epoch": epoch, "loss": loss, "lr": lr}
                )
                bar.set_postfix(loss=f"{loss:.4f}")
                pos["run_loss"], pos["run_n"] = 0.0, 0
            end_of_epoch = pos["batch"] == per_epoch
            if end_of_epoch:
                pos["epoch"], pos["batch"] = pos["epoch"] + 1, 0
            if (t.eval_every and pos["step"] % t.eval_every == 0) or (
                not t.eval_every and end_of_epoch
            ):
                evaluate_and_track()
            elif pos["step"] == total:
                evaluate_and_track()  # a run that ends mid-epoch is still scored at its end
            if (t.checkpoint_every and pos["step"] % t.checkpoint_every == 0) or end_of_epoch:
                save_checkpoint()
            if end_of_epoch:
                break  # a new order for the next epoch
    bar.close()
    keep = ("best", "last", "train_time", "tokens")
    return {"steps": total, "per_epoch": per_epoch, **{k: pos[k] for k in keep}}


def run(cfg: RunConfig) -> dict[str, Any]:
    """Train one config into its run folder and write its record (see record.py); return the record.
    An identical finished run is skipped; a ConfigError in setup writes nothing; any later failure
    writes a `failed` (or `oom`) record and raises RunFailed."""
    s = Session(cfg)
    if s.finished is not None:
        log.info("skip: %s already finished with this config (hash %s)", s.folder, s.chash)
        s.close()
        return {**s.finished, "skipped": True}
    failure: BaseException | None = None
    outcome = None
    try:
        s.build()
    except ConfigError:
        s.close()
        raise
    except Exception as exc:  # e.g. out of memory while moving the model to the GPU
        failure = exc
    s.open_folder()
    if failure is None:
        try:
            outcome = fit(s)
            s.after_training(outcome)
        except Exception as exc:
            failure = exc
    rec = s.finish(outcome, failure)
    if failure is not None:
        raise RunFailed(rec["error"]) from failure
    return rec
