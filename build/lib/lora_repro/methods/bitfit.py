"""BitFit (Ben Zaken et al. 2021): train only the bias vectors (plus the task head)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora_repro.methods.base import MethodConfig


@dataclass
class Config(MethodConfig):
    name: str = "bitfit"


def apply(model: nn.Module, cfg: Config, family: str) -> None:
    for name, p in model.named_parameters():
        if name.endswith(".bias") or name == "bias":
            p.requires_grad_(True)
