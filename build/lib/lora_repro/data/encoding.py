"""Tokenised classification examples and the collate function that pads them per batch.

Examples are stored flat (one int32 id array plus offsets) rather than as Python lists: MNLI's
393k training pairs would otherwise take gigabytes of list objects. Indexing gives the contract's
dict of token-id lists (lora_repro.data.TaskData).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

CHUNK = 8192  # rows per tokenizer call: bounds the transient Python lists


class Encoded(Sequence):
    """Tokenised examples; item i is {input_ids, attention_mask[, token_type_ids], labels}."""

    def __init__(
        self, ids: np.ndarray, types: np.ndarray | None, offsets: np.ndarray, labels: np.ndarray
    ) -> None:
        self.ids, self.types, self.offsets, self.labels = ids, types, offsets, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} out of range for {len(self)}")
        i = i % len(self)
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        ex: dict[str, Any] = {
            "input_ids": self.ids[start:end].tolist(),
            "attention_mask": [1] * (end - start),
        }
        if self.types is not None:
            ex["token_type_ids"] = self.types[start:end].tolist()
        ex["labels"] = self.labels[i].item()
        return ex

    def lengths(self) -> np.ndarray:
        """Token count of every example (for length statistics and bucketing)."""
        return np.diff(self.offsets)


def encode(
    rows: Sequence[tuple[tuple[str, ...], int | float]],
    tokenizer: Any,
    max_length: int,
    regression: bool = False,
) -> Encoded:
    """Tokenise (texts, label) rows: a single sentence or a pair with the tokenizer's special tokens,
    truncated longest-first to max_length, as run_glue does. No padding here (see PadCollate)."""
    ids, types, lengths = [], [], []
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        first = [texts[0] for texts, _ in chunk]
        second = [texts[1] for texts, _ in chunk] if len(chunk[0][0]) > 1 else None
        out = tokenizer(
            first, second, truncation=True, max_length=max_length, return_attention_mask=False
        )
        for k, seq in enumerate(out["input_ids"]):
            ids.extend(seq)
            lengths.append(len(seq))
            if "token_type_ids" in out:
                types.extend(out["token_type_ids"][k])
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    labels = np.array([label for _, label in rows], dtype=np.float32 if regression else np.int64)
    return Encoded(
        np.asarray(ids, dtype=np.int32),
        np.asarray(types, dtype=np.int8) if types else None,
        offsets,
        labels,
    )


class PadCollate:
    """Pad a list of examples to the longest in the batch (right side). A class rather than a
    closure so DataLoader workers can pickle it."""

    def __init__(self, tokenizer: Any, regression: bool = False) -> None:
        pad = tokenizer.pad_token_id
        # GPT-2 has no pad token; the attention mask hides padding, and load_model sets the model's
        # pad_token_id to eos for the same reason.
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))
        self.regression = regression

    def __call__(self, batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0}
        out = {}
        for key, value in fill.items():
            if key not in batch[0]:
                continue
            t = torch.full((len(batch), width), value, dtype=torch.long)
            for row, ex in enumerate(batch):
                t[row, : len(ex[key])] = torch.tensor(ex[key], dtype=torch.long)
            out[key] = t
        dtype = torch.float32 if self.regression else torch.long
        out["labels"] = torch.tensor([ex["labels"] for ex in batch], dtype=dtype)
        return out
