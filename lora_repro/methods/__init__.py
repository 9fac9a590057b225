"""The METHODS registry: name -> (typed Config, apply(model, cfg, family)).

Contract: `prepare` freezes the whole model, calls the method's `apply` to mark (or inject) what it
trains, then makes the task head trainable, as the paper does under every method (§5.1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, NamedTuple

from torch import nn

from lora_repro.errors import ConfigError, check_choice, check_types
from lora_repro.methods import adapters, bitfit, full, lora, prefix
from lora_repro.methods.base import MethodConfig
from lora_repro.models import head_params


class Method(NamedTuple):
    config: type[MethodConfig]
    apply: Callable[[nn.Module, Any, str], Any]


METHODS: dict[str, Method] = {
    "full": Method(full.Config, full.apply),
    "full_topk": Method(full.TopKConfig, full.apply_topk),
    "bitfit": Method(bitfit.Config, bitfit.apply),
    "lora": Method(lora.Config, lora.apply),
    "adapter_houlsby": Method(adapters.HoulsbyConfig, adapters.apply),
    "adapter_pfeiffer": Method(adapters.PfeifferConfig, adapters.apply),
    "adapter_lin": Method(adapters.LinConfig, adapters.apply),
    "prefix_layer": Method(prefix.LayerConfig, prefix.apply),
    "prefix_embed": Method(prefix.EmbedConfig, prefix.apply),
}


def method_config(values: dict[str, Any]) -> MethodConfig:
    """Typed method config from plain values; unknown names and keys are one-line errors."""
    values = dict(values)
    name = values.get("name")
    check_choice("method", name, METHODS)
    cls = METHODS[name].config
    known = {f.name for f in fields(cls)}
    extra = sorted(set(values) - known)
    if extra:
        raise ConfigError(f"unknown key(s) {extra} for method {name!r}; valid: {sorted(known)}")
    check_types(cls, values, f"method {name}")
    return cls(**values)


def prepare(model: nn.Module, cfg: MethodConfig, family: str) -> nn.Module:
    """Freeze everything, let the method mark or inject its trainable parameters, unfreeze the head."""
    model.requires_grad_(False)
    METHODS[cfg.name].apply(model, cfg, family)
    for p in head_params(model, family).values():
        p.requires_grad_(True)
    return model


def count_params(model: nn.Module, family: str) -> dict[str, int]:
    """trainable / method (trainable without the task head, the paper's |Θ|: a reparameterised
    PreLayer counts its kept activations, not its training-time MLP) / head / total."""
    head = {id(p) for p in head_params(model, family).values()}
    seen: set[int] = set()
    out = {"trainable_params": 0, "method_params": 0, "head_params": 0, "total_params": 0}
    for p in model.parameters():  # parameters() already skips tied duplicates
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        out["total_params"] += n
        if id(p) in head:
            out["head_params"] += n
        if p.requires_grad:
            out["trainable_params"] += n
            if id(p) not in head:
                out["method_params"] += n
    # a training-time device (PreLayer's reparam MLP) counts as what it leaves behind
    for m in model.modules():
        stored = getattr(m, "stored_count", None)
        kept = stored() if callable(stored) else None
        if kept is not None:
            out["method_params"] += kept[1] - kept[0]
    return out
