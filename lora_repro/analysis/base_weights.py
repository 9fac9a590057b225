"""The pretrained weights W a run adapted, for Table 7 (§7.3): loaded by model config name or path
through lora_repro.models.load_model, then cut to the matrix each adapter letter updated."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch
from torch import nn

from lora_repro.analysis.runs import Run
from lora_repro.errors import ConfigError
from lora_repro.models import FAMILIES, MODEL_TYPES, ModelConfig, load_model


def model_config(run: Run, spec: str | None = None) -> ModelConfig:
    """The base model of `run`: `spec` (a conf/model name or a checkpoint directory) when given,
    else the model recorded in the run's metadata (full values, or a conf/model name)."""
    if spec is None:
        values = run.model_values()
        if values and {"name", "family"} <= set(values):
            known = {f.name for f in fields(ModelConfig)}
            return _pretrained_only(ModelConfig(**{k: v for k, v in values.items() if k in known}))
        spec = run.model
        if not spec:
            raise ConfigError(f"{run.path}: no model recorded; pass --model <conf name or path>")
    if Path(spec).is_dir():
        from transformers import AutoConfig

        model_type = AutoConfig.from_pretrained(spec).model_type
        if model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{spec}: model_type {model_type!r} unsupported; valid: {', '.join(MODEL_TYPES)}"
            )
        return ModelConfig(name=Path(spec).name, family=MODEL_TYPES[model_type], pretrained=spec)
    from lora_repro.compose import values

    return _pretrained_only(ModelConfig(**values([f"model={spec}"])["model"]))


def _pretrained_only(cfg: ModelConfig) -> ModelConfig:
    # A randomly initialised base cannot be rebuilt from its config: its W would not be the one trained.
    if cfg.init != "pretrained":
        raise ConfigError(
            f"model {cfg.name!r} has init={cfg.init}: its base weights are not recoverable; "
            "pass --model <directory of the saved base model>"
        )
    return cfg


def _module(model: nn.Module, name: str) -> nn.Module:
    """The module a parameter-name prefix points to, with or without the LoRA wrapper and the
    base-model prefix (a run trained with a different head may name it differently)."""
    candidates = [name, name.split(".", 1)[-1]]
    for cand in candidates:
        for root in (model, model.base_model):
            try:
                mod = root.get_submodule(cand)
            except AttributeError:
                continue
            return getattr(mod, "base_layer", mod)
    raise ConfigError(f"the base model has no module {name!r}: is --model the run's base model?")


def base_weights(runs: list[Run], spec: str | None = None) -> list[dict[str, torch.Tensor]]:
    """For each run, W per letter stacked over its layers in nn.Linear layout (out × in), shaped
    like ΔW. Runs sharing a base model load it once and get the very same W tensors, so callers
    can compute W's own decomposition once per base model (keyed by id)."""
    cfgs = [model_config(run, spec) for run in runs]
    out: list[dict[str, torch.Tensor]] = [{} for _ in runs]
    for key in dict.fromkeys((c.name, c.pretrained) for c in cfgs):
        idx = [i for i, c in enumerate(cfgs) if (c.name, c.pretrained) == key]
        model = load_model(cfgs[idx[0]], "classification", num_labels=2)
        cache: dict[tuple, torch.Tensor] = {}
        for i in idx:
            out[i] = _weights(model, runs[i], cfgs[i], cache)
        del model
    return out


def _weights(
    model: nn.Module, run: Run, cfg: ModelConfig, cache: dict[tuple, torch.Tensor]
) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for letter, f in run.factors.items():
            if (letter, *f.modules) in cache:
                out[letter] = cache[(letter, *f.modules)]
                continue
            target = FAMILIES[cfg.family].targets.get(letter)
            mats = []
            for name in f.modules:
                layer = _module(model, name)
                w = layer.weight
                # transformers' Conv1D (GPT-2) stores (in, out): transpose to (out, in).
                w = w.t() if type(layer).__name__ == "Conv1D" else w
                if target is not None and target.slice is not None:
                    # fused c_attn: [q | k | v] along the output dimension (§4.2)
                    width = w.shape[0] // target.n_slices
                    w = w[target.slice * width : (target.slice + 1) * width]
                mats.append(w.detach().float().clone())
            W = torch.stack(mats)
            want = (f.B.shape[-2], f.A.shape[-1])
            if tuple(W.shape[-2:]) != want:
                raise ConfigError(
                    f"base weight of {letter!r} is {tuple(W.shape[-2:])} but the adapter's ΔW is "
                    f"{want}: is {cfg.name!r} the run's base model?"
                )
            out[letter] = cache[(letter, *f.modules)] = W
    return out
