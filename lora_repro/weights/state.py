"""Save only what a method trains, load it back onto a base model with checks, and switch between
several LoRA adapters held by one base model (the file format: weights/files.py).

Loading reads tensors with safetensors only (a pickle is never unpickled), checks the base identity and
every name and shape against the method applied to a meta-device copy of the model *before* touching
the real model, so a mismatch is one clear error and never a partial load.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn

from lora_repro.errors import ConfigError
from lora_repro.methods import METHODS, prepare
from lora_repro.methods.base import MethodConfig
from lora_repro.methods.lora import lora_layers
from lora_repro.models import ModelConfig, head_params
from lora_repro.weights.files import (
    AdapterMeta,
    check_base,
    model_shape,
    read_meta,
    read_tensors,
    write_adapter,
)

_HEADS = "_lora_repro_heads"  # per-adapter task heads kept on the model for switching


def trainable_state(model: nn.Module, adapter: str | None = None) -> dict[str, torch.Tensor]:
    """Trainable tensors by parameter name; with `adapter`, other LoRA adapters' tensors are left out."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if adapter is not None and ".lora." in name and f".lora.{adapter}." not in name:
            continue
        out[name] = p.detach()
    return out


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    method: MethodConfig,
    base: ModelConfig,
    head: str = "classification",
    task: str | None = None,
    adapter: str | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save the model's trainable tensors (with `adapter`: that LoRA adapter's, plus the head) and
    adapter.json; returns the directory. `tensors`: those tensors already gathered (a sharded
    model's full values, parallel.trainable_state)."""
    if adapter is not None and hasattr(method, "adapter_name"):
        method = replace(method, adapter_name=adapter)
    prefix = getattr(model, "prefix_tuning", None)
    if getattr(method, "reparam", False) and prefix is not None and prefix.mlp is None:
        method = replace(method, reparam=False)  # materialized: only the activations remain
    meta = AdapterMeta(
        method=method,
        base=asdict(base),
        shape=model_shape(model),
        tensors={},
        head=head,
        num_labels=model.config.num_labels if head == "classification" else None,
        task=task,
    )
    if tensors is None or adapter is not None:
        tensors = trainable_state(model, adapter)
    return write_adapter(directory, tensors, meta)


def _rename(tensors: dict[str, torch.Tensor], old: str, new: str) -> dict[str, torch.Tensor]:
    if old == new:
        return tensors
    return {k.replace(f".lora.{old}.", f".lora.{new}."): v for k, v in tensors.items()}


def _expected(model: nn.Module, method: MethodConfig, family: str, stacked: bool) -> dict:
    """Trainable parameter shapes the method would create, from a meta-device copy of the model."""
    with torch.device("meta"):
        skeleton = type(model)(copy.deepcopy(model.config))
    if stacked:  # another LoRA adapter next to existing ones: only its own tensors matter
        skeleton.requires_grad_(False)
        METHODS[method.name].apply(skeleton, method, family)
    else:
        prepare(skeleton, method, family)
    return {n: tuple(p.shape) for n, p in skeleton.named_parameters() if p.requires_grad}


def load_adapter(
    model: nn.Module,
    path: str | Path,
    family: str,
    base: ModelConfig | None = None,
    name: str | None = None,
    with_head: bool = True,
) -> AdapterMeta:
    """Load an adapter onto `model`, applying its method first unless the model already carries it.
    LoRA adapters stack: each gets its own name (`name`, default: the saved one) and becomes active.
    `with_head=False` keeps the model's own task head (the paper starts MRPC, RTE and STS-B from the
    MNLI LoRA weights with a new head, §5.1 / Table 9)."""
    meta = read_meta(path)
    tensors = read_tensors(path, meta)
    heads = set(head_params(model, family))
    if not with_head:
        tensors = {k: v for k, v in tensors.items() if k not in heads}
        meta = replace(meta, num_labels=None)
    check_base(meta, model, base)
    if meta.base.get("family") not in (None, family):
        raise ConfigError(f"adapter is for family {meta.base['family']!r}, model is {family!r}")
    method = meta.method
    is_lora = method.name == "lora"
    if is_lora:
        name = name or method.adapter_name
        tensors = _rename(tensors, method.adapter_name, name)
        method = replace(method, adapter_name=name)
    elif name is not None:
        raise ConfigError(f"only LoRA adapters take a name; this one is {method.name!r}")
    # Another LoRA adapter next to those already there: only its own tensors are created.
    stacked = is_lora and bool(lora_layers(model))
    expected = _expected(model, method, family, stacked)
    method_keys = set(expected) - heads
    problems = [f"missing {k}" for k in sorted(method_keys - set(tensors))]
    problems += [f"unexpected {k}" for k in sorted(set(tensors) - set(expected) - heads)]
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        # Where the model already has the tensor (its head, or a slot being refilled), it decides.
        want = tuple(params[k].shape) if k in params else expected.get(k)
        if want is not None and tuple(v.shape) != want:
            problems.append(f"{k} has shape {tuple(v.shape)}, model needs {want}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigError(f"adapter {path} does not fit: {'; '.join(problems[:3])}{more}")
    # Checked: now change the model. A method (or LoRA adapter name) it already carries is refilled.
    if is_lora and name in adapter_names(model) and not method_keys <= set(params):
        raise ConfigError(f"adapter {name!r} is loaded with other matrices; pass another name")
    if not method_keys <= set(params):
        if stacked:
            METHODS[method.name].apply(model, method, family)
        else:
            prepare(model, method, family)
        params = dict(model.named_parameters())
    head_now = {k: params[k].detach().clone() for k in heads}
    with torch.no_grad():
        for k, v in tensors.items():
            params[k].copy_(v.to(params[k].dtype))
    if is_lora:
        store = model.__dict__.setdefault(_HEADS, {None: head_now})
        store[name] = {k: v.clone() for k, v in tensors.items() if k in heads}
        set_active(model, name)
    return meta


def set_active(model: nn.Module, name: str | None) -> None:
    """Make LoRA adapter `name` the only one in effect (None: all off, the base model), without
    reloading anything; the adapter's task head, when it brought one, comes with it."""
    layers = lora_layers(model)
    if name is not None and not any(name in layer.lora for layer in layers.values()):
        known = sorted({n for layer in layers.values() for n in layer.lora})
        raise ConfigError(f"no LoRA adapter {name!r} on this model; loaded: {known}")
    for layer in layers.values():
        layer.unmerge()
        layer.active = name if name in layer.lora else None
    heads = model.__dict__.get(_HEADS, {})
    if name in heads or (name is None and None in heads):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in heads[name].items():
                params[k].copy_(v)


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoRA adapters loaded on the model."""
    return sorted({n for layer in lora_layers(model).values() for n in layer.lora})
