"""E2E, WebNLG 2017 and DART as causal-LM tasks for GPT-2 (§5.4 of the paper; Table 11).

Each (input, reference) pair becomes `context + EOS + " " + completion + EOS`, the layout of the released
LoRA code (`gpt2_encode.py --add_bos --add_eos`, where both markers are `<|endoftext|>`). The loss sees
only the completion: labels are -100 on the context (and on padding), so `lora_repro.losses.lm_loss`
trains exactly on "predict the completion and its EOS given the context".

Inputs are linearised as the released code does (`format_converting_*.py`):
- E2E: `name : Alimentum | area : city centre | family friendly : no`;
- WebNLG and DART: one `subject : property : object` per triple, joined by ` | ` (DART properties
  lowercased, WebNLG's `modifiedtripleset` verbatim, underscores included).

Training and validation-loss examples are pairs. Generation and scoring need each *input once* with
all its references (multi-reference BLEU etc., e2e-metrics' grouping by identical MR):
`generation_set(cfg, tokenizer, split)` returns those, one dict per unique context in order of first
appearance: `input_ids` (context + EOS), `context`, `references`, and for WebNLG `category`/`seen`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import torch

from lora_repro.data import TaskData
from lora_repro.data.nlg_sources import (  # re-exported: the readers are part of this module's API
    DEFAULT_FILES,
    E2E_SLOT_NAMES,
    HUB,
    READERS,
    TASKS,
    WEBNLG_SEEN,
    Pair,
    group_references,
    has_split,
    linearize_e2e_mr,
    linearize_triples,
    load_pairs,
    read_dart,
    read_e2e,
    read_webnlg,
    split_path,
)
from lora_repro.errors import ConfigError

log = logging.getLogger(__name__)

VERSION = "1"
SPLITS = ("train", "validation", "test")
__all__ = [
    "DEFAULT_FILES",
    "E2E_SLOT_NAMES",
    "HUB",
    "READERS",
    "SPLITS",
    "TASKS",
    "VERSION",
    "WEBNLG_SEEN",
    "Pair",
    "build",
    "encode_context",
    "encode_pair",
    "eos_token_id",
    "generation_set",
    "group_references",
    "has_split",
    "linearize_e2e_mr",
    "linearize_triples",
    "load_pairs",
    "make_collate",
    "pad_token_id",
    "read_dart",
    "read_e2e",
    "read_webnlg",
    "split_path",
]

# ------------------------------------------------------------------------------------------ tokenising


def eos_token_id(tokenizer: Any) -> int:
    """The end marker: GPT-2's `<|endoftext|>`; WordPiece tokenizers (the tiny test models) use [SEP]."""
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ConfigError(
        "the tokenizer has neither an eos_token nor a sep_token to end sequences with"
    )


def stop_ids(tokenizer: Any, stop_strings: list[str] | None) -> tuple[int, ...]:
    """The ids that end a hypothesis during the search: the end marker, plus each stop string that
    the tokenizer encodes as exactly one token (GPT-2: "\n\n" is 628); longer ones are cut after."""
    ids = [eos_token_id(tokenizer)]
    for text in stop_strings or []:
        piece = tokenizer.encode(text, add_special_tokens=False)
        if len(piece) == 1 and piece[0] not in ids:
            ids.append(int(piece[0]))
        elif len(piece) != 1:
            log.info(
                "stop string %r is %d tokens here: cut after decoding, not a search stop",
                text,
                len(piece),
            )
    return tuple(ids)


def pad_token_id(tokenizer: Any) -> int:
    value = getattr(tokenizer, "pad_token_id", None)
    return eos_token_id(tokenizer) if value is None else int(value)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_context(tokenizer: Any, context: str) -> list[int]:
    return [*_ids(tokenizer, context), eos_token_id(tokenizer)]


def encode_pair(tokenizer: Any, pair: Pair, max_length: int) -> tuple[dict[str, list[int]], bool]:
    """input_ids = context EOS completion EOS; labels = -100 on the context. Returns (example, truncated).
    The leading space matters for GPT-2's BPE: " The" and "The" are different tokens."""
    ctx = encode_context(tokenizer, pair.context)
    comp = [*_ids(tokenizer, " " + pair.completion), eos_token_id(tokenizer)]
    if len(ctx) >= max_length:
        raise ConfigError(
            f"context of {len(ctx)} tokens does not fit task.max_length={max_length}: {pair.context[:60]!r}"
        )
    truncated = len(ctx) + len(comp) > max_length
    comp = comp[: max_length - len(ctx)]
    return {"input_ids": ctx + comp, "labels": [-100] * len(ctx) + comp}, truncated


def make_collate(pad_id: int) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Right-pad input_ids with `pad_id` (masked out by attention_mask) and labels with -100."""

    def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(ex["input_ids"]) for ex in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, ex in enumerate(batch):
            n = len(ex["input_ids"])
            ids[i, :n] = torch.tensor(ex["input_ids"])
            labels[i, :n] = torch.tensor(ex["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    return collate


def _encode_all(cfg: Any, tokenizer: Any, pairs: list[Pair], split: str) -> list[dict[str, Any]]:
    examples, cut = [], 0
    for p in pairs:
        ex, truncated = encode_pair(tokenizer, p, cfg.max_length)
        examples.append(ex)
        cut += truncated
    if cut:
        log.warning(
            "%s %s: %d of %d completions cut at max_length=%d",
            cfg.name,
            split,
            cut,
            len(pairs),
            cfg.max_length,
        )
    return examples


def holdout_by_mr(pairs: list[Pair], n: int, seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, validation): `n` seeded-random inputs (MRs) and all their references go to validation,
    so no input is in both (splitting by line would leak an MR's other references into training)."""
    contexts = list(dict.fromkeys(p.context for p in pairs))
    if not 0 < n < len(contexts):
        raise ConfigError(
            f"task.validation_holdout={n}; valid: 1..{len(contexts) - 1} (the train file has {len(contexts)} inputs)"
        )
    held = set(random.Random(seed).sample(contexts, n))
    return [p for p in pairs if p.context not in held], [p for p in pairs if p.context in held]


def build(cfg: Any, tokenizer: Any) -> TaskData:
    """Train pairs and the validation pairs (for eval loss) as token ids; see the module docstring."""
    pairs = load_pairs(cfg, "train")
    evals = {}
    held = getattr(cfg, "validation_holdout", None)
    if held:  # no train split offline: validate on a seeded slice of the train file's own MRs
        pairs, val = holdout_by_mr(pairs, held)
        evals["validation"] = _encode_all(cfg, tokenizer, val[: cfg.eval_limit], "validation")
    if cfg.train_limit is not None and cfg.train_limit < len(pairs):
        # A fixed seed: the same subset for every run, so runs differ only in their own seed.
        pairs = random.Random(0).sample(pairs, cfg.train_limit)
    if not held and has_split(cfg, "validation"):
        val = load_pairs(cfg, "validation")[: cfg.eval_limit]
        evals["validation"] = _encode_all(cfg, tokenizer, val, "validation")
    return TaskData(
        name=cfg.name,
        version=VERSION,
        head="lm",
        num_labels=0,
        # Tables 3 and 4 lead with BLEU, scored on the decode after training (nlg/task.py);
        # the best epoch is the one with the lowest validation loss.
        primary_metric=f"{cfg.generate_split}/BLEU",
        select_metric="validation/loss" if evals else None,
        train=_encode_all(cfg, tokenizer, pairs, "train"),
        evals=evals,
        collate=make_collate(pad_token_id(tokenizer)),
        metrics=None,
    )


def generation_set(cfg: Any, tokenizer: Any, split: str = "test") -> list[dict[str, Any]]:
    """Unique inputs of a split with their grouped references, ready for beam search."""
    groups = group_references(load_pairs(cfg, split))[: cfg.eval_limit]
    for g in groups:
        g["input_ids"] = encode_context(tokenizer, g["context"])
    return groups
