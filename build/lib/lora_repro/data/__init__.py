"""Tasks as the trainer sees them: tokenised splits, a collate function and a scorer.

Contract (every task family implements `build(cfg, tokenizer) -> TaskData`):
- `train` and each entry of `evals` are sequences of dicts of token-id lists (plus `labels`);
- `collate` pads a list of those dicts dynamically into a batch of tensors;
- classification tasks score with `metrics(predictions, labels) -> {name: value}`;
  language-modelling tasks (NLG) are evaluated by loss during training and decoded afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class TaskData:
    name: str
    version: str  # bumped whenever data handling or scoring changes (recorded in every result)
    head: str  # classification | lm
    num_labels: int  # 1 = regression (STS-B); ignored for lm
    primary_metric: str
    train: Sequence[dict[str, Any]]
    evals: dict[str, Sequence[dict[str, Any]]]  # split name -> examples (MNLI has two)
    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    metrics: Callable[[Any, Any], dict[str, float]] | None = None


# task.kind -> module with `build(cfg, tokenizer) -> TaskData`, imported on first use.
BUILDERS: dict[str, str] = {"glue": "lora_repro.data.glue", "nlg": "lora_repro.data.nlg"}


def build_task(cfg: Any, tokenizer: Any) -> TaskData:
    """Dispatch on `cfg.kind` (a TaskConfig) to the task family's `build`."""
    import importlib

    return importlib.import_module(BUILDERS[cfg.kind]).build(cfg, tokenizer)
