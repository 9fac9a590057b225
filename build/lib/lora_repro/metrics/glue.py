"""GLUE scores as the LoRA paper reports them (Table 2, from the GLUE benchmark's own definitions).

MNLI: accuracy on matched and mismatched dev; CoLA: Matthews correlation; STS-B: Pearson (and
Spearman); MRPC and QQP: accuracy and F1 of the positive class; SST-2, QNLI, RTE: accuracy. Values are
fractions in [0, 1] (correlations in [-1, 1]); the paper prints them ×100.

Pure math on arrays: sklearn and scipy, not `evaluate.load`, which needs the network. Nothing of ours
is imported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def _array(x: Any) -> np.ndarray:
    """A numpy array from a list, numpy array or (CPU or GPU) torch tensor, without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def class_ids(predictions: Any) -> np.ndarray:
    """Class ids from logits (N, C) via argmax, or passed through when already ids (N,)."""
    p = _array(predictions)
    if p.ndim == 2:
        return p.argmax(axis=1)
    if p.ndim != 1:
        raise ValueError(
            f"classification predictions must be (N,) ids or (N, C) logits, got {p.shape}"
        )
    return p.astype(np.int64)


def scores(predictions: Any) -> np.ndarray:
    """Regression outputs as a flat float vector ((N,) or the (N, 1) a one-label head gives)."""
    p = _array(predictions).astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise ValueError(f"regression predictions must be (N,) or (N, 1), got {p.shape}")
    return p


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(pred == labels))


def f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (MRPC `equivalent`, QQP `duplicate`), as GLUE scores them."""
    return float(skm.f1_score(labels, pred, pos_label=1, average="binary", zero_division=0))


def matthews(pred: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA); sklearn returns 0 when either side is constant."""
    return float(skm.matthews_corrcoef(labels, pred))


def _correlation(fn: Callable, pred: np.ndarray, labels: np.ndarray) -> float:
    # A constant prediction (an untrained regression head can give one) has no correlation; report 0
    # like Matthews does, rather than NaN, which would break best-epoch selection and JSON records.
    if np.ptp(pred) == 0 or np.ptp(labels) == 0:
        return 0.0
    value = float(fn(pred, labels)[0])
    return 0.0 if math.isnan(value) else value


def pearson(pred: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.pearsonr, pred, labels)


def spearman(pred: np.ndarray, labels: np.ndarray) -> float:
    return _correlation(stats.spearmanr, pred, labels)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews": matthews,
    "pearson": pearson,
    "spearman": spearman,
}
REGRESSION_METRICS = ("pearson", "spearman")


def compute(names: Sequence[str], predictions: Any, labels: Any) -> dict[str, float]:
    """`{name: value}` for the named metrics. Classification predictions may be logits or class ids;
    regression ones (all names in REGRESSION_METRICS) are scores."""
    unknown = sorted(set(names) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown GLUE metric(s) {unknown}; valid: {sorted(METRICS)}")
    regression = all(n in REGRESSION_METRICS for n in names)
    pred = scores(predictions) if regression else class_ids(predictions)
    gold = _array(labels)
    gold = gold.astype(np.float64) if regression else gold.astype(np.int64)
    if gold.ndim != 1 or len(pred) != len(gold) or len(gold) == 0:
        raise ValueError(f"got {len(pred)} predictions for {len(gold)} labels (need equal, > 0)")
    return {name: METRICS[name](pred, gold) for name in names}


class Scorer:
    """`scorer(predictions, labels) -> {name: value}` for one task's metrics (picklable)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        compute(self.names, [0.0, 1.0], [0.0, 1.0])  # fail now on an unknown name, not at eval time

    def __call__(self, predictions: Any, labels: Any) -> dict[str, float]:
        return compute(self.names, predictions, labels)

    def __repr__(self) -> str:
        return f"Scorer{self.names}"
