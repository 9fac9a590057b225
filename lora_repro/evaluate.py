"""Scoring a model on a task's evaluation splits during training, and which evaluation is better."""

from __future__ import annotations

import torch
from torch import nn

from lora_repro.batching import by_length, lengths
from lora_repro.data import TaskData
from lora_repro.distributed import Runtime, gather
from lora_repro.losses import IGNORE_INDEX, lm_loss
from lora_repro.parallel import sharded


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TaskData, rt: Runtime, batch_size: int, forward=None, progress=None
) -> dict[str, float]:
    """Metrics on every eval split, `<split>/<metric>`; LM tasks report the token-mean loss. Each rank
    scores a strided shard; predictions are gathered so every rank computes the same numbers.
    `forward(model, batch)` gives (logits, the labels they line up with) (build.Built.forward;
    default: the model on all but the labels); `progress` wraps loops."""
    forward = forward or (
        lambda m, b: (m(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"])
    )
    progress = progress or (lambda it, **_: it)
    model.eval()
    # A sharded (FSDP) model gathers weights in every forward, so every rank runs the same number of
    # batches: a rank whose shard ran out repeats one and drops its output.
    lockstep = sharded(model)
    out: dict[str, float] = {}
    for split, examples in data.evals.items():
        # This rank's strided shard, longest first: batches of similar length pad little.
        idx = by_length(range(rt.rank, len(examples), rt.world), lengths(examples))
        longest = -(-len(examples) // rt.world) if lockstep else len(idx)  # rank 0's shard size
        preds, labels, total, count = [], [], 0.0, 0
        for i in progress(range(0, longest, batch_size), desc=f"eval {split}", leave=False):
            part = idx[i : i + batch_size]
            batch = rt.to_device(data.collate([examples[j] for j in part or [0]]))
            with rt.autocast():
                logits, target = forward(model, batch)
            if not part:  # a lockstep repeat
                continue
            if data.head == "lm":
                total += lm_loss(logits, target, 0.0, reduction="sum").item()
                count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            else:
                preds.append(logits.float().cpu())
                labels.append(batch["labels"].cpu())
        if data.head == "lm":
            parts = gather((total, count), rt.world)
            out[f"{split}/loss"] = sum(p[0] for p in parts) / max(1, sum(p[1] for p in parts))
        else:
            parts = gather(
                (torch.cat(preds) if preds else None, torch.cat(labels) if labels else None),
                rt.world,
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
