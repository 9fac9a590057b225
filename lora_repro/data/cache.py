"""Tokenised splits cached on disk per (tokenizer, rows, max_length): a sweep tokenises each split once.

The key hashes everything the encoding depends on: the tokenizer's full definition (its tokenizer.json
for fast tokenizers, else its vocabulary), the exact rows (texts and labels, so other data is another
entry), max_length and the label kind. Files are .npz arrays, written atomically and read without
pickle; an unreadable entry is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lora_repro.atomic import write_atomic
from lora_repro.data.encoding import Encoded, encode
from lora_repro.paths import cache_dir

log = logging.getLogger(__name__)
FORMAT = 1  # bump when encode() changes what it produces


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of the tokenizer's definition; its truncation and padding state (set by whichever call
    came last) are left out."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = {
            k: v
            for k, v in json.loads(backend.to_str()).items()
            if k not in ("truncation", "padding")
        }
    else:
        spec = sorted(tokenizer.get_vocab().items())
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    h.update(f"{type(tokenizer).__name__}|{tokenizer.padding_side}".encode())
    return h.hexdigest()[:16]


def key(rows: Sequence[tuple[tuple[str, ...], Any]], tokenizer: Any, max_length: int,
        regression: bool) -> str:  # fmt: skip
    h = hashlib.sha256(
        f"{FORMAT}|{tokenizer_fingerprint(tokenizer)}|{max_length}|{regression}".encode()
    )
    for texts, label in rows:
        h.update(json.dumps([list(texts), label]).encode())
    return h.hexdigest()[:20]


def _save(enc: Encoded, path: Path) -> None:
    arrays = {"ids": enc.ids, "offsets": enc.offsets, "labels": enc.labels}
    if enc.types is not None:
        arrays["types"] = enc.types
    with path.open("wb") as f:
        np.savez(f, **arrays)


def _load(path: Path) -> Encoded:
    with np.load(path, allow_pickle=False) as z:
        types = z["types"] if "types" in z.files else None
        return Encoded(z["ids"], types, z["offsets"], z["labels"])


def encode_cached(
    rows: Sequence[tuple[tuple[str, ...], Any]],
    tokenizer: Any,
    max_length: int,
    regression: bool = False,
    name: str = "split",
) -> Encoded:
    """encode(rows, ...) through the on-disk cache (paths.cache_dir(); off: plain encode)."""
    root = cache_dir()
    if root is None:
        return encode(rows, tokenizer, max_length, regression)
    path = root / "tokens" / f"{name}-{key(rows, tokenizer, max_length, regression)}.npz"
    if path.is_file():
        try:
            enc = _load(path)
            if len(enc) == len(rows):
                return enc
        except (OSError, ValueError, KeyError) as exc:
            log.warning("recomputing unreadable cache entry %s (%s)", path, exc)
    enc = encode(rows, tokenizer, max_length, regression)
    try:
        write_atomic(path, lambda p: _save(enc, p))
    except OSError as exc:  # a read-only home: caching is an optimisation, never a failure
        log.warning("cannot write the token cache %s (%s)", path, exc)
    return enc
