"""What every method shares: its config base class and the layer selection rule."""

from __future__ import annotations

from dataclasses import dataclass

from lora_repro.errors import ConfigError


@dataclass
class MethodConfig:
    """Base of every method's typed config; `name` is the METHODS registry key."""

    name: str = ""


def select_layers(layers: list[int] | None, n_blocks: int) -> list[int]:
    """Block indices to adapt: all of them by default; negative indices count from the top."""
    if layers is None:
        return list(range(n_blocks))
    if not layers:
        raise ConfigError(
            f"the layer list is empty; valid: block indices 0..{n_blocks - 1}, or null for all"
        )
    out = []
    for i in layers:
        if not -n_blocks <= i < n_blocks:
            raise ConfigError(
                f"layer index {i} out of range; valid: 0..{n_blocks - 1} (or negative)"
            )
        out.append(i % n_blocks)
    if len(set(out)) != len(out):
        raise ConfigError(f"layer indices repeat in {layers}")
    return sorted(out)
