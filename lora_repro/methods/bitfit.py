"""BitFit (Ben Zaken et al. 2021): train only the bias vectors (plus the task head)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora_repro.errors import ConfigError
from lora_repro.methods.base import MethodConfig


@dataclass
class Config(MethodConfig):
    name: str = "bitfit"


def apply(model: nn.Module, cfg: Config, family: str) -> None:
    found = 0
    for name, p in model.named_parameters():
        if name.endswith(".bias") or name == "bias":
            p.requires_grad_(True)
            found += 1
    if (
        not found
    ):  # Llama and Mistral have no biases (Qwen2 has q, k, v biases): nothing would train
        raise ConfigError(
            f"bitfit: this {family} model has no bias parameters (e.g. attention_bias=false), so "
            "BitFit would train nothing but the head; valid: a model with biases (Qwen2: q/k/v)"
        )
