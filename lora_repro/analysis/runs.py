"""Read run directories: the learned LoRA factors (adapter.safetensors) and what the run was
(adapter.json, config.yaml, result.json), stacked per target letter so the math can batch over layers.

A run directory holds `adapter.safetensors`, whose keys are the model's parameter names, e.g.
`roberta.encoder.layer.3.attention.self.query.lora.default.A.q` (A: r × in) and `...B.q` (B: out × r);
GPT-2's fused c_attn has `transformer.h.0.attn.c_attn.lora.default.A.q` and `.A.v`. Other tensors
(the task head) are ignored. Metadata files are read defensively: every field has a fallback.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lora_repro.errors import ConfigError

log = logging.getLogger(__name__)

ADAPTER_FILE = "adapter.safetensors"
META_FILES = ("adapter.json", "config.yaml", "result.json")

# <prefix>.<block index>.<module path>.lora.<adapter name>.<A|B>.<slice letter>
KEY = re.compile(
    r"^(?P<prefix>.*?)\.(?P<layer>\d+)\.(?P<path>.+)\.lora\.(?P<adapter>[^.]+)\.(?P<factor>[AB])\.(?P<letter>[^.]+)$"
)


@dataclass
class Factors:
    """One target letter of one run, stacked over layers: A (L, r, in), B (L, out, r)."""

    letter: str
    layers: list[int]
    A: torch.Tensor
    B: torch.Tensor
    modules: list[str]  # parameter-name prefix of the adapted module, per layer
    scale: float | None  # α/r (§4.1), α/√r with rsLoRA; None when the metadata has no α

    @property
    def r(self) -> int:
        return self.A.shape[-2]

    def delta_scale(self) -> float:
        if self.scale is None:
            log.warning("no alpha in the metadata of letter %s: ΔW = B A unscaled", self.letter)
            return 1.0
        return self.scale


@dataclass
class Run:
    """A run directory: its adapter factors per letter and the metadata that names it."""

    path: Path
    label: str
    meta: dict[str, Any] = field(default_factory=dict)
    factors: dict[str, Factors] = field(default_factory=dict)

    @property
    def model(self) -> str | None:
        m = self.model_values()
        return m.get("name") if m else dig(self.meta, "model")

    @property
    def task(self) -> str | None:
        return dig(self.meta, "config.task.name", "task.name", "task")

    @property
    def seed(self) -> Any:
        return dig(self.meta, "config.seed", "seed")

    def model_values(self) -> dict[str, Any] | None:
        """The run's model config values (name, family, pretrained, ...) if recorded."""
        m = dig(self.meta, "config.model", "model")
        return m if isinstance(m, dict) else None

    def method_values(self) -> dict[str, Any]:
        m = dig(self.meta, "config.method", "method")
        return m if isinstance(m, dict) else {}

    def describe(self) -> str:
        """'<model>, <task>' for titles; the directory name when neither is recorded."""
        parts = [str(p) for p in (self.model, self.task) if p]
        return ", ".join(parts) if parts else self.path.name


def dig(doc: dict[str, Any], *paths: str) -> Any:
    """The first of the dotted `paths` present in `doc` (None when none is)."""
    for p in paths:
        node: Any = doc
        for part in p.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return node
    return None


def _read_meta(path: Path) -> dict[str, Any]:
    """Merge adapter.json, config.yaml and result.json; earlier files win, missing or broken ones
    are skipped (their formats belong to the trainer and may grow)."""
    merged: dict[str, Any] = {}
    for name in reversed(META_FILES):
        f = path / name
        if not f.is_file():
            continue
        try:
            if f.suffix == ".json":
                doc = json.loads(f.read_text())
            else:
                import yaml

                doc = yaml.safe_load(f.read_text())
        except (OSError, ValueError) as exc:
            log.warning("cannot read %s (%s); ignoring it", f, exc)
            continue
        if isinstance(doc, dict):
            merged.update(doc)
    return merged


def _scale(method: dict[str, Any], r: int) -> float | None:
    alpha = method.get("alpha")
    if alpha is None:
        return None
    return float(alpha) / (math.sqrt(r) if method.get("rslora") else r)  # §4.1


def _stack(path: Path, tensors: dict[str, torch.Tensor], adapter: str, method: dict) -> dict:
    found: dict[str, dict[int, dict[str, Any]]] = {}
    for key, t in tensors.items():
        m = KEY.match(key)
        if not m or m["adapter"] != adapter:
            continue
        entry = found.setdefault(m["letter"], {}).setdefault(int(m["layer"]), {})
        entry[m["factor"]] = t.float()
        entry["module"] = f"{m['prefix']}.{m['layer']}.{m['path']}"
    out = {}
    for letter, by_layer in sorted(found.items()):
        layers = sorted(by_layer)
        missing = [i for i in layers if not {"A", "B"} <= set(by_layer[i])]
        if missing:
            raise ConfigError(f"{path}: letter {letter!r} lacks A or B at layers {missing}")
        shapes = {(by_layer[i]["A"].shape, by_layer[i]["B"].shape) for i in layers}
        if len(shapes) != 1:
            raise ConfigError(f"{path}: letter {letter!r} has differing shapes across layers")
        A = torch.stack([by_layer[i]["A"] for i in layers])
        B = torch.stack([by_layer[i]["B"] for i in layers])
        mods = [by_layer[i]["module"] for i in layers]
        out[letter] = Factors(letter, layers, A, B, mods, _scale(method, A.shape[-2]))
    return out


def read_run(path: str | Path, adapter: str | None = None) -> Run:
    """One run directory. `adapter` picks the adapter name when the file holds several."""
    from safetensors.torch import load_file

    path = Path(path)
    file = path / ADAPTER_FILE
    if not file.is_file():
        raise ConfigError(f"{path} is not a run directory: it has no {ADAPTER_FILE}")
    tensors = load_file(str(file))
    names = sorted({m["adapter"] for k in tensors if (m := KEY.match(k))})
    if not names:
        raise ConfigError(f"{file} holds no LoRA factors (keys like ...lora.<name>.A.<letter>)")
    if adapter is None:
        if len(names) > 1:
            raise ConfigError(f"{file} holds adapters {names}; pick one with --adapter")
        adapter = names[0]
    elif adapter not in names:
        raise ConfigError(f"unknown adapter {adapter!r} in {file}; valid: {', '.join(names)}")
    meta = _read_meta(path)
    run = Run(path=path, label=path.name, meta=meta)
    run.factors = _stack(path, tensors, adapter, run.method_values())
    run.label = _label(run)
    return run


def _label(run: Run) -> str:
    """A short legend name: 'r=8' plus the seed when recorded, else the directory name."""
    ranks = sorted({f.r for f in run.factors.values()})
    if not ranks:
        return run.path.name
    label = "r=" + "/".join(map(str, ranks))
    return f"{label} s{run.seed}" if run.seed is not None else label


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories from paths or globs; a directory without an adapter is searched below."""
    dirs: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) or []
        if not matches:
            raise ConfigError(f"no run directory matches {pattern!r}")
        for m in map(Path, matches):
            if m.is_file() and m.name == ADAPTER_FILE:
                m = m.parent
            if (m / ADAPTER_FILE).is_file():
                dirs.append(m)
            elif m.is_dir():
                dirs.extend(sorted(p.parent for p in m.rglob(ADAPTER_FILE)))
    unique = list(dict.fromkeys(dirs))
    if not unique:
        raise ConfigError(f"no {ADAPTER_FILE} under {' '.join(patterns)}")
    return unique


def read_runs(
    patterns: list[str], adapter: str | None = None, labels: list[str] | None = None
) -> list[Run]:
    """Every run matched by `patterns`, with distinct labels (duplicates get the directory name)."""
    runs = [read_run(p, adapter) for p in find_runs(patterns)]
    if labels:
        if len(labels) != len(runs):
            raise ConfigError(f"{len(labels)} labels given for {len(runs)} runs")
        for run, label in zip(runs, labels, strict=True):
            run.label = label
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.label] = counts.get(run.label, 0) + 1
    for run in runs:
        if counts[run.label] > 1:
            run.label = f"{run.label} ({run.path.name})"
    if len({r.label for r in runs}) != len(runs):  # same label and same directory name
        for i, run in enumerate(runs):
            run.label = f"{run.label} #{i + 1}"
    return runs
