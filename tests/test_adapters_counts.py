"""Baseline parameter counts on the full-size architectures against the paper's printed figures."""

from __future__ import annotations

import pytest

from lora_repro.analysis.paper_counts import ROWS, count, reconcile, rounds_to, table


def adapter_formula(blocks: int, per_block: int, d: int, r: int, ln: bool = False) -> int:
    """§5.1: |Θ| = L̂_Adpt·(2·d·r + r + d) + 2·L̂_LN·d."""
    return blocks * per_block * (2 * d * r + r + d) + (2 * blocks * d if ln else 0)


@pytest.mark.parametrize(
    "model, method, printed, values, want",
    [
        ("roberta-large", "adapter_houlsby", "0.8", [8], adapter_formula(24, 2, 1024, 8)),
        ("roberta-large", "adapter_pfeiffer", "3.0", [60, 61], adapter_formula(24, 1, 1024, 60)),
        ("gpt2-medium", "adapter_lin", "11.09", [224], adapter_formula(24, 1, 1024, 224, ln=True)),
        ("gpt2-large", "adapter_lin", "0.88", [8], adapter_formula(36, 1, 1280, 8, ln=True)),
    ],
)
def test_adapter_rows_match_the_printed_count(model, method, printed, values, want):
    m = reconcile(model, method, "bottleneck", printed)
    assert m.values == values
    assert m.counts[values[0]] == want and rounds_to(want, printed)


def test_prelayer_row_has_no_exact_match_and_reports_its_neighbours():
    m = reconcile("gpt2-medium", "prefix_layer", "length", "0.35")
    assert m.values == []
    assert m.counts == {7: 24 * 2 * 1024 * 7, 8: 24 * 2 * 1024 * 8}  # keys and values, every block


def test_full_top2_is_the_last_two_blocks():
    # One GPT-2 medium block: 12·d² + 13·d weights and biases (attention 4d²+4d, MLP 8d²+5d, 2 LNs 4d).
    d = 1024
    assert count("gpt2-medium", "full_topk", k=2) == 2 * (12 * d * d + 13 * d)


@pytest.mark.slow
def test_the_whole_table_builds():
    text = table()
    assert text.count("\n") == len(ROWS) + 1
