"""Bottleneck adapters, the paper's Adapter baselines (§5.1): A(h) = h + W_up f(W_down h).

Three placements, all on the frozen model's sub-layer outputs, after the output projection and its
dropout and before the residual add (post-LN blocks: before the LayerNorm), as in Houlsby et al. (2019,
Fig. 2); for pre-LN GPT-2 this is the attn / mlp output before the residual:

- `adapter_houlsby` (AdapterH): after the attention block and after the FFN, two per block.
- `adapter_pfeiffer` (AdapterP): after the FFN only (Pfeiffer et al. 2021's chosen configuration;
  AdapterHub's version of it also re-applies the block's LayerNorm around the adapter, which we do not:
  the paper counts and describes only the adapter, §5.1).
- `adapter_lin` (AdapterL): after the FFN only, with a LayerNorm on the adapter's input,
  A(h) = h + W_up ReLU(W_down LN(h)) (Lin et al. 2020, eq. 1).

Per adapter the paper counts 2·d·r + r + d parameters (both projections with biases), plus 2·d for
AdapterL's LayerNorm (§5.1: |Θ| = L̂_Adpt·(2·d_model·r + r + d_model) + 2·L̂_LN·d_model).

AdapterDrop (Rücklé et al. 2021): `drop_lower=n` leaves adapters out of the lowest n blocks, which
saves their cost in both training and inference at little loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lora_repro.errors import ConfigError, check_choice, check_positive
from lora_repro.methods.base import MethodConfig, select_layers
from lora_repro.models import FAMILIES, blocks

# Which sub-layer outputs get an adapter, per method.
SLOTS = {
    "adapter_houlsby": ("attn", "ffn"),
    "adapter_pfeiffer": ("ffn",),
    "adapter_lin": ("ffn",),
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "swish": nn.SiLU}


@dataclass
class Config(MethodConfig):
    """Shared by the three placements; `name` picks the placement (SLOTS)."""

    name: str = "adapter_houlsby"
    bottleneck: int = 64  # r, the adapter's inner width
    activation: str = "relu"
    # near_identity: both projections ~ N(0, init_std²) truncated at 2σ, biases 0, so A(h) ≈ h
    # (Houlsby et al. 2019 §2.1; init_std 1e-3 as in their released code). zero: W_up = 0, so A(h) = h
    # exactly at the start while W_down keeps nn.Linear's default init (the same trick as LoRA's B = 0).
    init: str = "near_identity"
    init_std: float = 1e-3
    layers: list[int] | None = None  # block indices to adapt; None = all
    drop_lower: int = 0  # AdapterDrop: no adapters in blocks 0..drop_lower-1
    # Houlsby et al. (2019, §2.1) also train the base model's LayerNorms; the paper's counts do not.
    train_layernorm: bool = False

    def __post_init__(self) -> None:
        check_choice("adapter method", self.name, SLOTS)
        check_positive("adapter bottleneck", self.bottleneck)
        check_choice("adapter activation", self.activation, ACTIVATIONS)
        check_choice("adapter init", self.init, ("near_identity", "zero"))
        check_positive("adapter init_std", self.init_std)
        if self.drop_lower < 0:
            raise ConfigError(f"adapter drop_lower must be >= 0, got {self.drop_lower!r}")


@dataclass
class HoulsbyConfig(Config):
    name: str = "adapter_houlsby"


@dataclass
class PfeifferConfig(Config):
    name: str = "adapter_pfeiffer"


@dataclass
class LinConfig(Config):
    name: str = "adapter_lin"


class Bottleneck(nn.Module):
    """h + W_up f(W_down [LN](h)): a residual bottleneck MLP."""

    def __init__(
        self,
        d: int,
        r: int,
        activation: str = "relu",
        layer_norm: bool = False,
        eps: float = 1e-5,
        init: str = "near_identity",
        init_std: float = 1e-3,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d, eps=eps) if layer_norm else None
        self.down = nn.Linear(d, r)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(r, d)
        self.init, self.init_std = init, init_std
        if self.down.weight.device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        s = self.init_std
        if self.init == "zero":
            self.down.reset_parameters()
            nn.init.zeros_(self.up.weight)
        else:
            nn.init.trunc_normal_(self.down.weight, std=s, a=-2 * s, b=2 * s)
            nn.init.trunc_normal_(self.up.weight, std=s, a=-2 * s, b=2 * s)
            nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.norm(h) if self.norm is not None else h
        return h + self.up(self.act(self.down(z)))


class AdapterAfter(nn.Module):
    """Runs the wrapped module, then an adapter on its output. Wrapping (not a hook) keeps the adapter
    visible in `print(model)` and its parameters in the state dict under `<path>.adapter.*`."""

    def __init__(self, base_layer: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.base_layer(*args, **kwargs))


def _eps(config) -> float:
    for key in ("layer_norm_eps", "layer_norm_epsilon"):
        if getattr(config, key, None) is not None:
            return float(getattr(config, key))
    return 1e-5


def apply(model: nn.Module, cfg: Config, family: str) -> list[str]:
    """Insert adapters into the chosen blocks; returns the wrapped module paths (inside the blocks)."""
    fam = FAMILIES[family]
    block_list = blocks(model, family)
    n = len(block_list)
    if cfg.drop_lower >= n:
        raise ConfigError(f"adapter drop_lower={cfg.drop_lower} leaves no block; valid: 0..{n - 1}")
    layers = [i for i in select_layers(cfg.layers, n) if i >= cfg.drop_lower]
    if not layers:
        raise ConfigError(
            f"no block left to adapt: layers={cfg.layers}, drop_lower={cfg.drop_lower}"
        )
    d = model.config.hidden_size
    ref = next(model.parameters())
    wrapped = []
    for i in layers:
        block = block_list[i]
        for slot in SLOTS[cfg.name]:
            path = fam.attn_out if slot == "attn" else fam.ffn_out
            module = block.get_submodule(path)
            if isinstance(module, AdapterAfter):
                raise ConfigError(f"block {i} already has an adapter at {path!r}")
            adapter = Bottleneck(
                d,
                cfg.bottleneck,
                cfg.activation,
                layer_norm=cfg.name == "adapter_lin",
                eps=_eps(model.config),
                init=cfg.init,
                init_std=cfg.init_std,
            )
            adapter.to(device=ref.device, dtype=ref.dtype)
            parent, _, child = path.rpartition(".")
            setattr(
                block.get_submodule(parent) if parent else block,
                child,
                AdapterAfter(module, adapter),
            )
            adapter.requires_grad_(True)
            wrapped.append(f"{i}.{path}")
        if cfg.train_layernorm:
            for m in block.modules():
                if isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm":
                    m.requires_grad_(True)
    return wrapped
