"""LoRA (Hu et al. 2021, §4.1): h = W0 x + (α/r) · B A x with W0 frozen, A ∈ R^{r×k}, B ∈ R^{d×r}.

`LoRALayer` wraps an existing `nn.Linear` or transformers `Conv1D` in place (the base weight is not
copied) and holds one or more named adapters. Each adapter adapts one or more *output slices* of the base
layer with its own A and B: a plain projection has one slice covering all outputs; GPT-2's fused `c_attn`
gets a q slice and a v slice and the k slice is left exactly untouched (the paper's setting, §4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from lora_repro.errors import ConfigError, check_choice, check_positive
from lora_repro.methods.base import MethodConfig, select_layers
from lora_repro.methods.lowrank import add_update_
from lora_repro.models import FAMILIES, blocks


def _is_conv1d(layer: nn.Module) -> bool:
    # transformers' Conv1D stores its weight as (fan_in, fan_out), the transpose of nn.Linear.
    return type(layer).__name__ == "Conv1D"


def layer_shape(layer: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a Linear or Conv1D."""
    w = layer.weight
    return (w.shape[0], w.shape[1]) if _is_conv1d(layer) else (w.shape[1], w.shape[0])


class LoRAUpdate(nn.Module):
    """One adapter's low-rank update of one base layer: for each adapted output slice, its own A, B."""

    def __init__(
        self,
        in_features: int,
        slices: dict[str, tuple[int, int]],
        ranks: dict[str, int],
        alpha: float,
        dropout: float = 0.0,
        init: str = "kaiming",
        rslora: bool = False,
    ) -> None:
        super().__init__()
        self.slices = slices
        self.ranks = ranks
        self.A = nn.ParameterDict()
        self.B = nn.ParameterDict()
        self.scale: dict[str, float] = {}
        for key, (start, end) in slices.items():
            r = ranks[key]
            if r > min(in_features, end - start):
                raise ConfigError(
                    f"rank {r} for {key!r} exceeds the matrix size {end - start}x{in_features}; "
                    f"valid ranks: 1..{min(in_features, end - start)}"
                )
            self.A[key] = nn.Parameter(torch.empty(r, in_features))
            self.B[key] = nn.Parameter(torch.zeros(end - start, r))  # B = 0: ΔW = 0 at start (§4.1)
            # α/r (§4.1); rsLoRA's α/√r keeps the update's scale stable as r grows (Kalajdzievski 2023).
            self.scale[key] = alpha / (math.sqrt(r) if rslora else r)
        self.init = init
        # p = 0 skips the dropout op entirely rather than running an identity copy.
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for key, a in self.A.items():
            if self.init == "gaussian":  # the paper's text: "random Gaussian initialization for A"
                nn.init.normal_(a, std=1.0 / self.ranks[key])
            else:  # the released code: nn.Linear's default, Kaiming-uniform with a=√5
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            nn.init.zeros_(self.B[key])

    def delta_weight(self, key: str) -> torch.Tensor:
        """ΔW of one slice in nn.Linear layout (out_slice × in): scale · B A."""
        return self.scale[key] * (self.B[key] @ self.A[key])

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add this adapter's update to the base output `y` (which the caller owns)."""
        keys = list(self.slices)
        # One op with a hand-written backward: see lowrank.py for what plain autograd ops wasted.
        return add_update_(
            y,
            self.dropout(x),
            [self.slices[k] for k in keys],
            [self.scale[k] for k in keys],
            [self.A[k] for k in keys],
            [self.B[k] for k in keys],
        )


class LoRALayer(nn.Module):
    """A base Linear/Conv1D plus named LoRA adapters, at most one active at a time."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.fan_in_fan_out = _is_conv1d(base_layer)
        self.in_features, self.out_features = layer_shape(base_layer)
        self.lora = nn.ModuleDict()
        self.train(base_layer.training)
        self.active: str | None = None
        self.merged: str | None = None

    def add(self, name: str, update: LoRAUpdate) -> None:
        if name in self.lora:
            raise ConfigError(f"adapter {name!r} already exists on this layer")
        self.lora[name] = update
        self.active = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        if self.active is None or self.merged == self.active:
            return y  # merged or disabled: exactly the base layer, no added latency (§4.1)
        if self.merged is not None:
            raise RuntimeError(
                f"adapter {self.merged!r} is merged; unmerge it before using another"
            )
        return self.lora[self.active](x, y)

    def full_delta(self, name: str) -> torch.Tensor:
        """ΔW of adapter `name` over the whole base weight, in nn.Linear layout (out × in); rows of
        slices the adapter does not touch are exactly zero."""
        upd = self.lora[name]
        w = self.base_layer.weight
        delta = torch.zeros(self.out_features, self.in_features, dtype=w.dtype, device=w.device)
        for key, (start, end) in upd.slices.items():
            delta[start:end] = upd.delta_weight(key).to(w.dtype)
        return delta

    @torch.no_grad()
    def _apply_delta(self, name: str, sign: float) -> None:
        delta = self.full_delta(name)
        self.base_layer.weight += sign * (delta.t() if self.fan_in_fan_out else delta)

    def merge(self, name: str | None = None) -> None:
        """Fold ΔW of the adapter into W0, so forward is the plain base layer (§4.1, no latency)."""
        name = name or self.active
        if self.merged == name:
            return
        if self.merged is not None:
            raise RuntimeError(f"adapter {self.merged!r} is already merged; unmerge it first")
        self._apply_delta(name, +1.0)
        self.merged = self.active = name

    def unmerge(self) -> None:
        """Subtract the merged ΔW again, restoring W0 (up to float rounding)."""
        if self.merged is not None:
            self._apply_delta(self.merged, -1.0)
            self.merged = None


@dataclass
class Config(MethodConfig):
    """LoRA settings. `targets` are letters (q, k, v, o, f1, f2); `ranks` overrides r per letter."""

    name: str = "lora"
    targets: str = "qv"
    r: int = 8
    alpha: float = 8.0  # "we set α to the first r we try and do not tune it" (§4.1)
    dropout: float = 0.0
    init: str = "kaiming"  # kaiming (released code) | gaussian (paper text)
    rslora: bool = False
    ranks: dict[str, int] | None = field(default_factory=dict)  # null in YAML: none
    layers: list[int] | None = None  # block indices to adapt; None = all
    adapter_name: str = "default"

    def __post_init__(self) -> None:
        if self.ranks is None:  # conf/method/lora.yaml: null, so `method.ranks={q:8,v:4}` composes
            self.ranks = {}
        if not self.targets:
            raise ConfigError("lora targets is empty; valid: letters q, k, v, o, f1, f2 (e.g. qv)")
        check_positive("lora r", self.r)
        check_positive("lora alpha", self.alpha)
        for letter, r in self.ranks.items():
            check_positive(f"lora rank for {letter!r}", r)
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        check_choice("lora init", self.init, ("kaiming", "gaussian"))

    def letters(self, family: str | None = None) -> list[str]:
        """The target letters; `all` is every matrix the family names (q k v o f1 f2, or for the
        Llama family q k v o g u d)."""
        if self.targets == "all":
            if family is None:
                raise ConfigError("lora targets=all needs the model family to expand")
            return list(FAMILIES[family].targets)
        return parse_targets(self.targets)


def parse_targets(targets: str) -> list[str]:
    """'qkvo' -> [q, k, v, o]; 'qvf1f2' -> [q, v, f1, f2]."""
    letters, i = [], 0
    while i < len(targets):
        tok = targets[i : i + 2] if targets[i] == "f" else targets[i]
        letters.append(tok)
        i += len(tok)
    return letters


def apply(model: nn.Module, cfg: Config, family: str) -> list[LoRALayer]:
    """Inject LoRA into the chosen blocks and targets; A and B are the only new trainable tensors."""
    fam = FAMILIES[family]
    letters = cfg.letters(family)
    for letter in letters:
        check_choice(f"target letter for family {family!r}", letter, fam.targets)
    if len(set(letters)) != len(letters):
        raise ConfigError(f"target letters repeat in {cfg.targets!r}")
    for letter in cfg.ranks:
        check_choice("letter in lora ranks", letter, letters)
    block_list = blocks(model, family)
    layers = select_layers(cfg.layers, len(block_list))
    injected: list[LoRALayer] = []
    n_slices = 0
    for i in layers:
        block = block_list[i]
        by_path: dict[str, list[str]] = {}
        for letter in letters:
            by_path.setdefault(fam.targets[letter].path, []).append(letter)
        for path, group in by_path.items():
            module = block.get_submodule(path)
            layer = module if isinstance(module, LoRALayer) else LoRALayer(module)
            slices = {}
            for letter in group:
                t = fam.targets[letter]
                width = layer.out_features // t.n_slices
                start = 0 if t.slice is None else t.slice * width
                slices[letter] = (start, start + width)
            update = LoRAUpdate(
                layer.in_features,
                slices,
                {k: cfg.ranks.get(k, cfg.r) for k in group},
                cfg.alpha,
                cfg.dropout,
                cfg.init,
                cfg.rslora,
            )
            w = layer.base_layer.weight
            update.to(device=w.device, dtype=w.dtype if w.is_floating_point() else None)
            update.train(module.training)  # new modules default to train mode; follow the model's
            layer.add(cfg.adapter_name, update)
            if layer is not module:
                parent, _, child = path.rpartition(".")
                setattr(block.get_submodule(parent) if parent else block, child, layer)
            injected.append(layer)
            n_slices += len(group)
    if n_slices != len(layers) * len(letters):  # injection must match exactly layers × letters
        raise ConfigError(
            f"LoRA matched {n_slices} matrices, expected {len(layers)} layers x {len(letters)} letters"
        )
    for layer in injected:
        for p in layer.lora[cfg.adapter_name].parameters():
            p.requires_grad_(True)
    return injected


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """All LoRA layers of a model, by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALayer)}
