"""The models a bench worker compares: every method applied to one base model, the frozen-backbone
bound, and PEFT's LoRA as the reference implementation.

Every variant is a copy of the base whose *frozen* tensors share the base's storage, so a worker holds
a dozen variants of a full-size model in about the memory of one plus what each trains.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from typing import Any

import torch
from torch import nn

from lora_repro.compose import CONF_DIR, values
from lora_repro.methods import METHODS, method_config, prepare
from lora_repro.methods.base import MethodConfig, select_layers
from lora_repro.methods.lora import Config as LoRAConfig
from lora_repro.methods.lora import lora_layers
from lora_repro.models import FAMILIES, ModelConfig, blocks, head_params

# Entries that are not METHODS: the frozen-backbone bound and PEFT's LoRA as the reference.
SPECIAL = ("frozen", "peft_lora")


def model_config(name: str, overrides: list[str]) -> ModelConfig:
    """Full-size architecture from conf/model/<name>.yaml, always with random weights."""
    arch = values([f"model={name}", *overrides])["model"]
    return ModelConfig(**{**arch, "init": "random"})


@functools.cache
def _method_values(name: str) -> dict[str, Any]:
    if (CONF_DIR / "method" / f"{name}.yaml").exists():
        return values([f"method={name}"])["method"]
    return {"name": name}


def method_cfg(name: str) -> MethodConfig:
    """A method's config with the defaults of conf/method/<name>.yaml (or the dataclass defaults)."""
    return method_config(copy.deepcopy(_method_values(name)))


def share_clone(base: nn.Module) -> nn.Module:
    """A deep copy whose parameters are new Parameter objects over the base's storage (so each copy
    keeps its own requires_grad flags but frozen weights are not duplicated)."""
    memo = {id(p): nn.Parameter(p.data, requires_grad=p.requires_grad) for p in base.parameters()}
    return copy.deepcopy(base, memo)


def _unshare(model: nn.Module, base: nn.Module, only_trainable: bool = True) -> None:
    """Give a variant its own copy of every base tensor it will change (trained or merged)."""
    base_ptrs = {p.data_ptr() for p in base.parameters()}
    for p in model.parameters():
        if p.data_ptr() in base_ptrs and (p.requires_grad or not only_trainable):
            p.data = p.data.clone()


def target_modules(model: nn.Module, family: str, cfg: LoRAConfig) -> list[nn.Module]:
    """The modules LoRA adapts (one per block and module path; GPT-2's q and v share c_attn)."""
    fam = FAMILIES[family]
    block_list = blocks(model, family)
    paths = dict.fromkeys(fam.targets[letter].path for letter in cfg.letters(family))
    return [
        block_list[i].get_submodule(p)
        for i in select_layers(cfg.layers, len(block_list))
        for p in paths
    ]


def _leaf_output(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor | None:
    if not torch.is_grad_enabled() or out.requires_grad:
        return None
    leaf = out.detach().requires_grad_()
    # The gradient only has to be computed, not kept: drop it the moment it arrives.
    leaf.register_post_accumulate_grad_hook(lambda t: setattr(t, "grad", None))
    return leaf


def apply_frozen_bound(model: nn.Module, family: str, cfg: LoRAConfig) -> None:
    """The frozen-backbone bound for LoRA with `cfg`: backbone frozen, task head trainable (as under
    LoRA), and the output of every module LoRA would adapt made a leaf that requires grad. Backward then
    computes exactly the activation gradients LoRA needs (from the loss down to the lowest adapted
    projection) and no parameter gradient but the head's: LoRA minus its A and B work."""
    model.requires_grad_(False)
    for p in head_params(model, family).values():
        p.requires_grad_(True)
    for module in target_modules(model, family, cfg):
        module.register_forward_hook(_leaf_output)


def apply_peft_lora(model: nn.Module, family: str, cfg: LoRAConfig) -> nn.Module:
    """PEFT's LoRA on the same matrices. A fused projection (GPT-2's c_attn) is one module to PEFT:
    it gets rank n·r and α·n for n adapted slices, which contains our per-slice adapters exactly
    (stacked A, block-diagonal B; see tests/test_peft_parity.py)."""
    import peft

    fam = FAMILIES[family]
    letters = cfg.letters(family)
    paths = dict.fromkeys(fam.targets[letter].path for letter in letters)
    n = max(sum(fam.targets[x].path == p for x in letters) for p in paths)
    rank = max(cfg.ranks.get(x, cfg.r) for x in letters)
    n_blocks = len(blocks(model, family))
    layers = "|".join(str(i) for i in select_layers(cfg.layers, n_blocks))
    pattern = rf"(.*\.)?{re.escape(fam.blocks)}\.({layers})\.({'|'.join(map(re.escape, paths))})"
    heads = list(head_params(model, family).values())
    peft_cfg = peft.LoraConfig(
        r=n * rank,
        lora_alpha=(math.sqrt(n) if cfg.rslora else n) * cfg.alpha,  # keeps α/r (α/√r) per slice
        lora_dropout=cfg.dropout,
        target_modules=pattern,
        fan_in_fan_out=any(fam.targets[x].n_slices > 1 for x in letters),
        use_rslora=cfg.rslora,
    )
    wrapped = peft.get_peft_model(model, peft_cfg)
    for p in heads:
        p.requires_grad_(True)
    return wrapped


def build_variant(base: nn.Module, name: str, family: str) -> nn.Module:
    """The base model with method `name` applied (or a SPECIAL entry); trained tensors unshared."""
    model = share_clone(base)
    lora_cfg = method_cfg("lora")
    if name == "frozen":
        apply_frozen_bound(model, family, lora_cfg)
    elif name == "peft_lora":
        model = apply_peft_lora(model, family, lora_cfg)
    else:
        prepare(model, method_cfg(name), family)
    _unshare(model, base)
    model.train(base.training)
    return model


def param_counts(model: nn.Module) -> dict[str, int]:
    total = trainable = 0
    for p in model.parameters():  # parameters() skips tied duplicates
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total}


def checkpoint_bytes(model: nn.Module) -> int:
    """Size of the safetensors file holding the trainable tensors (what a run would save)."""
    from safetensors.torch import save

    tensors = {
        n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad
    }
    return len(save(tensors)) if tensors else 0


def _randomise_lora_b(model: nn.Module) -> None:
    """B = 0 at init (§4.1) would make merging a no-op; give it values so merged weights differ."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for upd in layer.lora.values():
                for b in upd.B.values():
                    b.copy_(torch.randn(b.shape, generator=g).to(b) * 0.01)


def latency_variants(base: nn.Module, family: str, methods: list[str]) -> dict[str, nn.Module]:
    """base, LoRA merged and unmerged, PEFT's LoRA unmerged, and every method in `methods` that adds
    modules; methods that only choose which existing weights train (full, bitfit, ...) run exactly the
    base model's forward and are left out."""
    out = {"base": base}
    lora = build_variant(base, "lora", family)
    _randomise_lora_b(lora)
    merged = build_variant(base, "lora", family)
    _randomise_lora_b(merged)
    _unshare(merged, base, only_trainable=False)  # merging writes into W0
    for layer in lora_layers(merged).values():
        layer.merge()
    out.update(lora_merged=merged, lora_unmerged=lora)
    n_base = param_counts(base)["total_params"]
    for name in methods:
        if name in ("frozen", "lora"):
            continue
        model = build_variant(base, name, family)
        if name == "peft_lora" or param_counts(model)["total_params"] != n_base:
            out[name if name != "peft_lora" else "peft_lora_unmerged"] = model
    return out


def registered_methods() -> list[str]:
    """The bench's default method list: the bound, every registered method, PEFT's LoRA."""
    return ["frozen", *METHODS, "peft_lora"]
