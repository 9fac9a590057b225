"""Parameter counts of a model x method on the meta device: no weights, no download (`lora-repro
count`, the paper-count table and the tests all call `count`)."""

from __future__ import annotations

from typing import Any

from lora_repro.compose import values
from lora_repro.methods import count_params, method_config, prepare
from lora_repro.models import ModelConfig, load_model


def count(overrides: list[str]) -> dict[str, Any]:
    """{model, method, trainable_params, method_params (the paper's |Θ|), head_params, total_params}
    of the composed config (`model=roberta-base method=lora method.r=8`)."""
    cfg = values(overrides)
    model_cfg = ModelConfig(**cfg["model"])
    method = method_config(cfg["method"])
    model = load_model(model_cfg, cfg["head"], cfg["num_labels"], device="meta")
    prepare(model, method, model_cfg.family)
    return {"model": model_cfg.name, "method": method.name, **count_params(model, model_cfg.family)}
