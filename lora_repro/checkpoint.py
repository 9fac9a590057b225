"""Training checkpoints: everything a killed run needs to continue bit-identically.

checkpoint/step-00000120/ holds the trainable weights (safetensors, keyed by parameter name) and
state.pt (optimizer, scheduler, grad scaler, RNG states of every rank, data position, best-so-far and
the history file's length). A step folder is written under a temporary name and renamed when complete,
so a kill at any moment leaves the previous checkpoint intact; older folders are removed afterwards.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS, STATE = "trainable.safetensors", "state.pt"


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(
    root: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    objects: dict[str, Any],
    rng_all: list[dict[str, Any]],
) -> Path:
    """Write checkpoint step-<step> (rank 0 only): `weights` are the full trainable tensors
    (parallel.trainable_state); `objects` maps names to things with a state_dict (scheduler,
    scaler) or to plain picklable values (optimizer state, data position, best, history)."""
    from safetensors.torch import save_file

    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, str(tmp / WEIGHTS))
    state = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in objects.items()}
    state["rng"] = rng_all
    torch.save(state, tmp / STATE)
    _fsync_dir(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in root.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def latest(root: Path) -> Path | None:
    """The newest complete checkpoint folder (temporary ones are never complete)."""
    done = sorted(
        p for p in root.glob("step-*") if (p / STATE).is_file() and (p / WEIGHTS).is_file()
    )
    return done[-1] if done else None


def load(path: Path, model: nn.Module, objects: dict[str, Any]) -> dict[str, Any]:
    """Restore the trainable weights and every object with a state_dict; return the full state."""
    from safetensors.torch import load_file

    from lora_repro.parallel import load_trainable

    weights = load_file(str(path / WEIGHTS))
    params = dict(model.named_parameters())
    missing = sorted(set(weights) ^ {n for n, p in params.items() if p.requires_grad})
    if missing:
        raise RuntimeError(
            f"checkpoint {path} does not match the model's trainable set: {missing[:5]}"
        )
    load_trainable(model, weights)  # into each rank's shard when the model is sharded
    state = torch.load(
        path / STATE, weights_only=False
    )  # our own file: numpy RNG state needs pickle
    for key, obj in objects.items():
        if hasattr(obj, "load_state_dict"):
            obj.load_state_dict(state[key])
    return state


def _fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
