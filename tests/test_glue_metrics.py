"""GLUE metrics against values worked out by hand, and each task's declared metrics (Table 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lora_repro.data.glue import GLUE_TASKS
from lora_repro.metrics.glue import Scorer, compute

PRED = [1, 0, 1, 1, 0]
GOLD = [1, 0, 0, 1, 1]
# TP = 2 (rows 0, 3), TN = 1 (row 1), FP = 1 (row 2), FN = 1 (row 4)


def test_accuracy_f1_matthews_by_hand():
    out = compute(["accuracy", "f1", "matthews"], PRED, GOLD)
    assert out["accuracy"] == pytest.approx(3 / 5)
    precision, recall = 2 / 3, 2 / 3
    assert out["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    # (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 − 1) / sqrt(3·3·2·2)
    assert out["matthews"] == pytest.approx(1 / 6)


def test_logits_are_argmaxed_and_tensors_accepted():
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.0, 3.0], [-1.0, 1.0], [5.0, 4.0]])
    assert compute(["accuracy"], logits, torch.tensor(GOLD)) == {"accuracy": pytest.approx(3 / 5)}
    three_way = np.array([[0.0, 0.0, 1.0], [0.0, 2.0, 1.0], [3.0, 0.0, 1.0]])
    assert compute(["accuracy"], three_way, [2, 1, 1])["accuracy"] == pytest.approx(2 / 3)


def test_pearson_and_spearman_by_hand():
    # x = [1, 2, 3], y = [1, 2, 4]: deviations [-1, 0, 1] and [-4/3, -1/3, 5/3];
    # r = 3 / sqrt(2 · 42/9) = 9 / sqrt(84)
    out = compute(["pearson", "spearman"], [[1.0], [2.0], [3.0]], [1.0, 2.0, 4.0])
    assert out["pearson"] == pytest.approx(9 / math.sqrt(84))
    assert out["spearman"] == pytest.approx(1.0)  # same order
    # ranks [1, 3, 2] vs [1, 2, 3]: rho = 1 − 6·Σd² / (n(n²−1)) = 1 − 6·2 / 24
    assert compute(["spearman"], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0])["spearman"] == pytest.approx(0.5)


def test_degenerate_predictions_score_zero_not_nan():
    assert compute(["pearson", "spearman"], [2.5, 2.5, 2.5], [1.0, 2.0, 4.0]) == {
        "pearson": 0.0,
        "spearman": 0.0,
    }
    assert compute(["matthews", "f1"], [0, 0, 0], [0, 1, 1]) == {"matthews": 0.0, "f1": 0.0}


def test_bad_shapes_and_names():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        compute(["accuracy"], [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="unknown GLUE metric"):
        Scorer(["bleu"])
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, 1\)"):
        compute(["pearson"], np.zeros((3, 2)), [0.0, 1.0, 2.0])


def test_every_task_declares_the_table2_metric():
    table2 = {"mnli": "dev_matched/accuracy", "cola": "dev/matthews", "stsb": "dev/pearson"}
    for name, task in GLUE_TASKS.items():
        assert task.primary == table2.get(name, "dev/accuracy")
        split, metric = task.primary.split("/")
        assert split in task.evals and metric in task.metrics
        Scorer(task.metrics)  # names are valid
    assert set(GLUE_TASKS["mnli"].evals) == {"dev_matched", "dev_mismatched"}
    assert GLUE_TASKS["stsb"].metrics == ("pearson", "spearman")
    assert GLUE_TASKS["mrpc"].metrics == GLUE_TASKS["qqp"].metrics == ("accuracy", "f1")
