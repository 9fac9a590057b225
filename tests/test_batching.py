"""Length-grouped batching and length-ordered evaluation (lora_repro/batching.py)."""

from __future__ import annotations

import random

import pytest
import torch
import toytask

from lora_repro import train
from lora_repro.batching import by_length, epoch_order

_rng = random.Random(0)
SIZES = [_rng.randint(3, 120) for _ in range(1000)]


def test_plain_order_is_the_seeded_permutation():
    want = torch.randperm(1000, generator=torch.Generator().manual_seed(7 * 100_003 + 2)).tolist()
    assert epoch_order(1000, 7, 2, 32) == want


def test_grouped_order_is_a_seeded_permutation_of_similar_length_batches():
    order = epoch_order(1000, 0, 0, 32, SIZES)
    assert sorted(order) == list(range(1000))  # every example once
    assert order == epoch_order(1000, 0, 0, 32, SIZES)  # (seed, epoch) decide it: resumable
    assert order != epoch_order(1000, 0, 1, 32, SIZES) != epoch_order(1000, 1, 0, 32, SIZES)
    full = [order[i : i + 32] for i in range(0, 1000 // 32 * 32, 32)]

    def spread(batches):  # mean (longest - shortest) within a batch
        return sum(max(SIZES[i] for i in b) - min(SIZES[i] for i in b) for b in batches) / len(
            batches
        )

    plain = epoch_order(1000, 0, 0, 32)
    assert spread(full) < 0.2 * spread([plain[i : i + 32] for i in range(0, 992, 32)])
    # the batches are shuffled, not sorted: neither lengths nor positions run in one direction
    heads = [max(SIZES[i] for i in b) for b in full]
    assert heads != sorted(heads) and heads != sorted(heads, reverse=True)
    # 1000 = 2 windows (800 + 200); 200 = 6 batches + 8: the partial batch goes last
    assert len(order[992:]) == 8


def test_evaluation_order_is_longest_first():
    assert by_length([0, 1, 2, 3], [5, 9, 1, 9]) == [1, 3, 0, 2]


@pytest.mark.parametrize("extra", [[], ["train.group_by_length=true"]])
def test_grouped_runs_train_and_tag_their_folder(tmp_path, monkeypatch, extra):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    rec = train.run(toytask.config(tmp_path, "train.max_steps=null", "train.epochs=2", *extra))
    assert rec["status"] == "success" and rec["metrics"]["primary"] is not None
    assert ("bylen" in rec["run"]["id"]) == bool(extra)
