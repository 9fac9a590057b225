"""The optimiser's parameter groups and the learning-rate schedule (Table 9/11)."""

from __future__ import annotations

from typing import Any

from torch import nn


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
