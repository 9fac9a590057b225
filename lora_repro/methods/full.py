"""Full fine-tuning and FT top-k (the paper's FT and FTTop2 baselines, §5.1)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lora_repro.errors import ConfigError, check_positive
from lora_repro.methods.base import MethodConfig
from lora_repro.models import blocks


@dataclass
class Config(MethodConfig):
    name: str = "full"


@dataclass
class TopKConfig(MethodConfig):
    """Train only the last `k` transformer blocks (plus the task head)."""

    name: str = "full_topk"
    k: int = 2

    def __post_init__(self) -> None:
        check_positive("full_topk k", self.k)


def apply(model: nn.Module, cfg: Config, family: str) -> None:
    model.requires_grad_(True)


def apply_topk(model: nn.Module, cfg: TopKConfig, family: str) -> None:
    # FTTop2 (Li & Liang 2021, as quoted in §5.1): the last two layers; the head is added by the caller.
    block_list = list(blocks(model, family))
    if cfg.k > len(block_list):
        raise ConfigError(
            f"full_topk k={cfg.k} exceeds the model's {len(block_list)} blocks; valid: 1..{len(block_list)}"
        )
    for block in block_list[-cfg.k :]:
        block.requires_grad_(True)
