"""A run's identity and folder, derived from its config alone (no timestamps).

runs/<experiment>/<model>/<task>/<method tag>/<hyperparameter tag>/s<seed>/: relaunching a sweep fills
holes and never duplicates. The tags name the usual swept keys; the config hash covers everything that
changes results, so two configs that differ only in a key missing from the folder name are caught
rather than mixed up.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from lora_repro.atomic import write_atomic
from lora_repro.config import RunConfig, TrainConfig
from lora_repro.errors import ConfigError
from lora_repro.record import read_json

NON_IDENTITY = {
    "runs_dir": None,
    "logging": None,
    "cluster": None,
    "task": ("data_dir", "source", "generate_metrics"),  # which scores are reported, not computed
    # activation_checkpointing recomputes the same activations (same RNG): memory, not the result
    "train": ("device", "num_workers", "checkpoint_every", "keep_checkpoint", "eval_batch_size", "grad_accum",
              "activation_checkpointing", "strategy"),
}  # fmt: skip

# Short names for the folder tags; a field shows when it is always shown or differs from its default.
METHOD_ABBR = {
    "targets": "",
    "r": "r",
    "alpha": "a",
    "k": "k",
    "dropout": "do",
    "init": "",
    "ranks": "r",
}
METHOD_ALWAYS = ("targets", "r", "alpha", "k")
TRAIN_ABBR = {
    "lr": "lr", "batch_size": "bs", "epochs": "ep", "max_steps": "steps", "weight_decay": "wd",
    "warmup_ratio": "wr", "warmup_steps": "ws", "max_grad_norm": "clip", "precision": "",
    "eval_every": "ev", "classifier_dropout": "cd", "init_from": "init", "group_by_length": "bylen",
}  # fmt: skip
TASK_ABBR = {
    "max_length": "len",
    "train_limit": "n",
    "eval_limit": "nev",
    "label_smoothing": "ls",
    "validation_holdout": "ho",
}
TASK_DEFAULTS = {"max_length": 128, "train_limit": None, "eval_limit": None, "label_smoothing": 0.0,
                 "validation_holdout": None}  # fmt: skip


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    if isinstance(value, dict):
        return "".join(f"{k}{v}" for k, v in sorted(value.items()))
    return str(value)


def _part(key: str, abbr: dict[str, str], value: Any) -> str:
    if key == "init_from":  # a path: its short hash keeps the folder name small and stable
        return "init" + hashlib.sha256(str(value).encode()).hexdigest()[:8]
    prefix = abbr.get(key, key)
    return prefix + _fmt(value) if not isinstance(value, bool) or value else f"no{key}"


def method_tag(cfg: RunConfig) -> str:
    """e.g. `lora_qv_r8_a8`, `lora_qv_r8_a8_do0.1`, `bitfit`, `full_topk_k2`."""
    defaults = type(cfg.method)()
    parts = [cfg.method.name]
    for f in fields(cfg.method):
        if f.name in ("name", "adapter_name"):
            continue
        value = getattr(cfg.method, f.name)
        if f.name in METHOD_ALWAYS or value != getattr(defaults, f.name):
            parts.append(_part(f.name, METHOD_ABBR, value))
    return "_".join(parts)


def hparam_tag(cfg: RunConfig) -> str:
    """e.g. `lr0.0005_bs16_ep60`; other training and task keys join when they differ from defaults."""
    t, defaults = cfg.train, TrainConfig()
    skip = set(NON_IDENTITY["train"])
    length = f"steps{t.max_steps}" if t.max_steps is not None else f"ep{_fmt(float(t.epochs))}"
    parts = [f"lr{_fmt(float(t.lr))}", f"bs{t.batch_size}", length]
    for f in fields(t):
        if f.name in skip or f.name in ("lr", "batch_size", "epochs", "max_steps"):
            continue
        value = getattr(t, f.name)
        if value != getattr(defaults, f.name):
            parts.append(_part(f.name, TRAIN_ABBR, value))
    for key, default in TASK_DEFAULTS.items():
        value = getattr(cfg.task, key)
        if value != default:
            parts.append(_part(key, TASK_ABBR, value))
    if cfg.model.dtype != "fp32":  # the base's storage changes the numbers: its own folder
        parts.append(f"base{cfg.model.dtype}")
    return "_".join(parts)


def run_id(cfg: RunConfig) -> str:
    return "/".join(
        [
            cfg.experiment,
            cfg.model.name,
            cfg.task.name,
            method_tag(cfg),
            hparam_tag(cfg),
            f"s{cfg.seed}",
        ]
    )


def run_dir(cfg: RunConfig) -> Path:
    return Path(cfg.runs_dir) / run_id(cfg)


# Keys added after runs were made, with the value that reproduces those runs: at that value a key is
# left out of the identity, so adding it does not orphan every earlier run folder.
ADDED_LATER = {
    ("train", "group_by_length"): False,
    ("task", "stop_strings"): None,
    ("task", "validation_holdout"): None,
    ("model", "dtype"): "fp32",
}


def identity(cfg: RunConfig) -> dict[str, Any]:
    """The config minus NON_IDENTITY keys (and ADDED_LATER keys at their old value): what the hash
    covers."""
    out = asdict(cfg)
    for key, sub in NON_IDENTITY.items():
        if sub is None:
            out.pop(key, None)
        else:
            for name in sub:
                out[key].pop(name, None)
    for (group, name), old in ADDED_LATER.items():
        if out.get(group, {}).get(name, old) == old:
            out.get(group, {}).pop(name, None)
    return out


def config_hash(cfg: RunConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prior_state(folder: Path, chash: str, data: str | None = None) -> str:
    """What the folder holds for this config: `new`, `done` (an identical finished run: skip), or
    `resume` (an unfinished or failed attempt of the same config: continue from its checkpoint).
    A different config in the same folder is an error: a swept key is missing from the folder name.
    So is a finished run whose data files differ from `data` (data.fingerprint): task.data_dir is not
    part of the identity, so other data under the same config must not reuse its result."""
    result = read_json(folder / "result.json")
    held = (result or {}).get("config_hash") or _hash_in_config_yaml(folder / "config.yaml")
    if held is not None and held != chash:
        raise ConfigError(
            f"{folder} holds a run of a different config (hash {held}, this one {chash}); a key that "
            f"differs is missing from the folder name: set experiment=<new name> or remove the folder"
        )
    if result is not None and result.get("status") == "success":
        was = (result.get("task") or {}).get("data_fingerprint")
        if was and data and was != data:
            raise ConfigError(
                f"{folder} finished on other data (fingerprint {was}; the files read now: {data}); "
                "valid: the same data, or experiment=<new name> for a run on this data"
            )
        return "done"
    return "resume" if folder.exists() else "new"


def _hash_in_config_yaml(path: Path) -> str | None:
    try:
        first = path.read_text().splitlines()[0]
    except (FileNotFoundError, IndexError):
        return None
    return first.split(":", 1)[1].strip() if first.startswith("# config_hash:") else None


def write_config(folder: Path, cfg: RunConfig, chash: str) -> None:
    import yaml

    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    write_atomic(folder / "config.yaml", f"# config_hash: {chash}\n{body}")
