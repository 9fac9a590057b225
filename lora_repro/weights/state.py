"""Adapter files: save only what a method trains, load it back onto a base model with checks, and
switch between several LoRA adapters held by one base model.

An adapter is a directory with two files:
- `adapter.safetensors`: the trainable tensors, keyed by the model's parameter names (LoRA:
  `...query.lora.<adapter>.A.q`; the task head under its own names).
- `adapter.json`: {"format_version", "method": <method config>, "base": <model config: name, family,
  pretrained, ...>, "shape": <architecture numbers>, "head", "num_labels", "task", "tensors": {name: shape}}.

Loading reads tensors with safetensors only (a pickle is never unpickled), checks the base identity and
every name and shape against the method applied to a meta-device copy of the model *before* touching
the real model, so a mismatch is one clear error and never a partial load.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_repro.atomic import write_atomic
from lora_repro.errors import ConfigError
from lora_repro.methods import METHODS, method_config, prepare
from lora_repro.methods.base import MethodConfig
from lora_repro.methods.lora import lora_layers
from lora_repro.models import ModelConfig, head_params

FORMAT_VERSION = 1
WEIGHTS, META = "adapter.safetensors", "adapter.json"
_HEADS = "_lora_repro_heads"  # per-adapter task heads kept on the model for switching


@dataclass
class AdapterMeta:
    """adapter.json, parsed."""

    method: MethodConfig
    base: dict[str, Any]
    shape: dict[str, Any]
    tensors: dict[str, list[int]]
    head: str = "classification"
    num_labels: int | None = None
    task: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": asdict(self.method),
            "base": self.base,
            "shape": self.shape,
            "head": self.head,
            "num_labels": self.num_labels,
            "task": self.task,
            "tensors": self.tensors,
            **self.extra,
        }


def model_shape(model: nn.Module) -> dict[str, Any]:
    """The architecture numbers an adapter depends on (checked on load whatever the base is called)."""
    c = model.config
    return {
        "model_type": c.model_type,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "vocab_size": c.vocab_size,
    }


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


def write_adapter(
    directory: str | Path, tensors: dict[str, torch.Tensor], meta: AdapterMeta
) -> Path:
    """Write the two files atomically; adapter.json last, so its presence means the adapter is whole."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = replace(meta, tensors={k: list(v.shape) for k, v in state.items()})
    write_atomic(directory / WEIGHTS, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    text = json.dumps(meta.to_dict(), indent=2) + "\n"
    write_atomic(directory / META, lambda p: p.write_text(text))
    return directory


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    method: MethodConfig,
    base: ModelConfig,
    head: str = "classification",
    task: str | None = None,
    adapter: str | None = None,
) -> Path:
    """Save the model's trainable tensors (with `adapter`: that LoRA adapter's, plus the head) and
    adapter.json; returns the directory."""
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
    return write_adapter(directory, trainable_state(model, adapter), meta)


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist; an adapter is a directory with {WEIGHTS} + {META}"
        )
    directory = path if path.is_dir() else path.parent
    return directory / WEIGHTS, directory / META


def read_meta(path: str | Path) -> AdapterMeta:
    """Parse and check adapter.json (the directory or either file may be given)."""
    _, meta_path = _paths(path)
    if not meta_path.is_file():
        raise ConfigError(
            f"{meta_path} not found; an adapter is a directory with {WEIGHTS} + {META}"
        )
    try:
        raw = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{meta_path} is not valid JSON ({exc})") from None
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{meta_path}: format_version {version!r}; this version reads {FORMAT_VERSION}"
        )
    for key in ("method", "base", "tensors"):
        if not isinstance(raw.get(key), dict):
            raise ConfigError(f"{meta_path}: missing or invalid {key!r}")
    known = {"format_version", "method", "base", "shape", "head", "num_labels", "task", "tensors"}
    return AdapterMeta(
        method=method_config(raw["method"]),
        base=raw["base"],
        shape=raw.get("shape") or {},
        tensors=raw["tensors"],
        head=raw.get("head", "classification"),
        num_labels=raw.get("num_labels"),
        task=raw.get("task"),
        extra={k: v for k, v in raw.items() if k not in known},
    )


def read_tensors(path: str | Path, meta: AdapterMeta | None = None) -> dict[str, torch.Tensor]:
    """Read adapter.safetensors with safetensors only; it must hold exactly the tensors adapter.json
    lists, with those shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights, _ = _paths(path)
    if not weights.is_file():
        raise ConfigError(f"{weights} not found")
    with open(weights, "rb") as f:
        magic = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header. Its first byte can be
    # 0x80 (a header of 128 + 256·k bytes), so look for the header's "{" before calling it a pickle.
    if magic[8:9] != b"{" and (magic[:1] == b"\x80" or magic[:4] == b"PK\x03\x04"):
        raise ConfigError(
            f"{weights} is a pickle / torch.save file, not safetensors; adapters are never unpickled"
        )
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"{weights} is not a readable safetensors file ({exc})") from None
    if meta is not None:
        listed = {k: list(v) for k, v in meta.tensors.items()}
        found = {k: list(v.shape) for k, v in tensors.items()}
        if listed != found:
            diff = sorted(set(listed) ^ set(found)) or [k for k in listed if listed[k] != found[k]]
            raise ConfigError(f"{weights} does not match {META} (e.g. {diff[:3]}); file edited?")
    return tensors


def check_base(meta: AdapterMeta, model: nn.Module, base: ModelConfig | None) -> None:
    """The adapter was trained on this base: same family/name/source, architecture and label count."""
    problems = []
    if base is not None:
        for key in ("family", "name", "pretrained"):
            want, have = meta.base.get(key), getattr(base, key)
            if want is not None and have is not None and want != have:
                problems.append(f"{key} {want!r} (adapter) vs {have!r} (model)")
    have_shape = model_shape(model)
    for key, want in meta.shape.items():
        if have_shape.get(key) != want:
            problems.append(f"{key} {want!r} (adapter) vs {have_shape.get(key)!r} (model)")
    if meta.head == "classification" and meta.num_labels not in (None, model.config.num_labels):
        problems.append(
            f"num_labels {meta.num_labels} (adapter) vs {model.config.num_labels} (model)"
        )
    if problems:
        raise ConfigError("adapter does not fit this base model: " + "; ".join(problems))


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
