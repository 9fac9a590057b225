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
