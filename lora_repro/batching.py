"""Which examples form each training batch, and the order evaluation reads them in.

The order of an epoch is a function of (seed, epoch) alone, so a run resumed mid-epoch regenerates it
exactly and continues at its batch index (the resume-is-bit-identical promise holds with grouping).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

GROUP_WINDOW = 50  # batches per window that length grouping sorts within (HF's mega-batch factor)


def lengths(examples: Sequence[dict[str, Any]]) -> list[int]:
    """Token count of every example (Encoded stores them; other sequences are measured)."""
    if hasattr(examples, "lengths"):
        return [int(n) for n in examples.lengths()]
    return [len(ex["input_ids"]) for ex in examples]


def epoch_order(
    n: int, seed: int, epoch: int, batch_size: int, sizes: Sequence[int] | None = None
) -> list[int]:
    """A permutation of range(n) for one epoch. With `sizes` (token counts), length-grouped: the
    shuffled examples are cut into windows of GROUP_WINDOW batches, each window is sorted by length
    and cut into batches, and the full batches are shuffled (a partial one goes last, where the loop
    drops it). Batches then hold examples of similar length, so far less of each is padding, while
    every batch is still a random draw and the epoch still sees every example once."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=gen).tolist()
    if sizes is None:
        return order
    window = batch_size * GROUP_WINDOW
    full, partial = [], []
    for start in range(0, n, window):
        chunk = sorted(
            order[start : start + window], key=lambda i: -sizes[i]
        )  # stable: seeded ties
        for k in range(0, len(chunk), batch_size):
            (full if len(chunk) - k >= batch_size else partial).append(chunk[k : k + batch_size])
    shuffled = [full[b] for b in torch.randperm(len(full), generator=gen).tolist()]
    return [i for batch in shuffled + partial for i in batch]


def by_length(indices: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """`indices` longest first: evaluation batches then pad little (scores do not depend on order)."""
    return sorted(indices, key=lambda i: -sizes[i])
