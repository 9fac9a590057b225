"""The few transformers internals the project touches, in one place, so upstream drift has one home.

transformers 5.24 renamed the KV-cache argument and output field `past_key_values` -> `cache` (the old
name is a deprecated alias until 5.40 on calls and outputs, but a forward pre-hook sees the kwargs as
the caller passed them: `generate` passes `cache`). Code that reads or passes the cache goes through
these helpers, which accept both spellings.
"""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

CACHE_NAMES = ("cache", "past_key_values")  # newest first


def cache_in(kwargs: dict[str, Any]) -> Any:
    """The KV cache a forward call was given (None if none), under either name."""
    for name in CACHE_NAMES:
        if kwargs.get(name) is not None:
            return kwargs[name]
    return None


def cache_out(output: Any) -> Any:
    """The KV cache a forward call returned, under either name."""
    for name in CACHE_NAMES:
        value = getattr(output, name, None)
        if value is not None:
            return value
    return None


def cache_kwarg(model: nn.Module) -> str:
    """The keyword this model's forward takes its KV cache by (a task model that forwards **kwargs
    to its base model takes the base model's name)."""
    for m in (model, getattr(model, "base_model", model)):
        params = inspect.signature(m.forward).parameters
        for name in CACHE_NAMES:
            if name in params:
                return name
    return "past_key_values"


def checkpointing_enabled(model: nn.Module) -> bool:
    """Whether activation (gradient) checkpointing is on; transformers 5.24 renamed the attribute
    `is_gradient_checkpointing` -> `is_activation_checkpointing` (the old one warns, gone in v6)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name) or name in vars(model):
            return bool(getattr(model, name))
    return False


def enable_checkpointing(model: nn.Module) -> None:
    """Turn activation checkpointing on, under the method name this transformers has."""
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        if hasattr(model, name):
            getattr(model, name)()
            return
    raise AttributeError(f"{type(model).__name__} has no activation checkpointing")
