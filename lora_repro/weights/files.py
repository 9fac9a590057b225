"""The adapter file format: a directory with two files, written atomically, read without pickle.

- `adapter.safetensors`: the trainable tensors, keyed by the model's parameter names (LoRA:
  `...query.lora.<adapter>.A.q`; the task head under its own names).
- `adapter.json`: {"format_version", "method": <method config>, "base": <model config: name, family,
  pretrained, ...>, "shape": <architecture numbers>, "head", "num_labels", "task", "tensors": {name: shape}}.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_repro.atomic import write_atomic
from lora_repro.errors import ConfigError
from lora_repro.methods import method_config
from lora_repro.methods.base import MethodConfig
from lora_repro.models import ModelConfig

FORMAT_VERSION = 1
WEIGHTS, META = "adapter.safetensors", "adapter.json"


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
