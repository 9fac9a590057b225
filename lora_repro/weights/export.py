"""Leave lora_repro behind: merge LoRA into the base weights and save a plain transformers model
directory, or write a LoRA adapter in PEFT's format.

Merging is what makes LoRA free at inference (§4.1: W = W0 + BA, no extra latency); adapters and
prefixes add computation and cannot be merged.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from lora_repro.errors import ConfigError
from lora_repro.methods.adapters import AdapterAfter
from lora_repro.methods.lora import LoRALayer, lora_layers
from lora_repro.methods.prefix import ATTR as PREFIX_ATTR
from lora_repro.models import FAMILIES, head_params

log = logging.getLogger(__name__)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def merge_into_base(model: nn.Module) -> nn.Module:
    """Fold the active LoRA adapter into the base weights and unwrap every LoRA layer, leaving the
    plain transformers model (in place). Inactive adapters are dropped."""
    if hasattr(model, PREFIX_ATTR) or any(isinstance(m, AdapterAfter) for m in model.modules()):
        raise ConfigError(
            "adapters and prefixes add computation and cannot be merged; only lora, bitfit, full and "
            "full_topk export a plain model"
        )
    for path, layer in lora_layers(model).items():
        if layer.active is not None:
            layer.merge(layer.active)
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.base_layer)
    model.__dict__.pop("_lora_repro_heads", None)
    return model


def export_merged(model: nn.Module, out_dir: str | Path, tokenizer=None) -> Path:
    """Merge and `save_pretrained` into `out_dir` (replaced atomically); loads with transformers alone."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    merge_into_base(model)
    model.requires_grad_(True)  # a plain model: nothing frozen
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _peft_matrices(layer: LoRALayer, name: str, alpha: float, rslora: bool):
    """(A, B, rank) for PEFT, whose update is (alpha / r) · B A over the whole layer. A plain layer maps
    one to one. A fused layer with several adapted slices (GPT-2 c_attn: q and v) becomes one update of
    rank Σ r_i: A stacks the A_i, B is block-diagonal over the slices with each B_i rescaled so the
    product is exactly our Σ_i s_i B_i A_i in its rows and zero in the untouched (k) rows."""
    upd = layer.lora[name]
    keys = list(upd.slices)
    if len(keys) == 1 and upd.slices[keys[0]] == (0, layer.out_features):
        return upd.A[keys[0]], upd.B[keys[0]], upd.ranks[keys[0]]
    rank = sum(upd.ranks[k] for k in keys)
    scale = alpha / (rank**0.5 if rslora else rank)
    a = torch.cat([upd.A[k] for k in keys], 0)
    b = a.new_zeros(layer.out_features, rank)
    col = 0
    for k in keys:
        start, end = upd.slices[k]
        r = upd.ranks[k]
        b[start:end, col : col + r] = upd.B[k] * (upd.scale[k] / scale)
        col += r
    return a, b, rank


def export_peft(
    model: nn.Module,
    out_dir: str | Path,
    family: str,
    method,
    head: str = "classification",
    base_name: str | None = None,
) -> Path:
    """Write adapter_config.json + adapter_model.safetensors that `peft.PeftModel.from_pretrained`
    loads onto the same base model, giving the same outputs. `method` is the LoRA config."""
    from safetensors.torch import save_file

    if method.name != "lora":
        raise ConfigError(f"PEFT export is for LoRA adapters; this one is {method.name!r}")
    name = method.adapter_name
    layers = {p: m for p, m in lora_layers(model).items() if name in m.lora}
    if not layers:
        raise ConfigError(f"no LoRA adapter {name!r} on this model")
    tensors, ranks, conv = {}, {}, False
    for path, layer in layers.items():
        a, b, rank = _peft_matrices(layer, name, method.alpha, method.rslora)
        tensors[f"base_model.model.{path}.lora_A.weight"] = a.detach().contiguous().cpu()
        tensors[f"base_model.model.{path}.lora_B.weight"] = b.detach().contiguous().cpu()
        ranks[path] = rank
        conv |= layer.fan_in_fan_out
    heads = list(FAMILIES[family].heads) if head == "classification" else []
    for key, p in head_params(model, family).items() if heads else ():
        tensors[f"base_model.model.{key}"] = p.detach().contiguous().cpu()
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    config = {
        "peft_type": "LORA",
        "task_type": "SEQ_CLS" if head == "classification" else "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": common,
        "lora_alpha": method.alpha,
        "use_rslora": method.rslora,
        "lora_dropout": method.dropout,
        "target_modules": sorted(layers),
        "rank_pattern": {p: r for p, r in ranks.items() if r != common},
        "alpha_pattern": {},
        "fan_in_fan_out": conv,
        "bias": "none",
        "modules_to_save": heads or None,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
