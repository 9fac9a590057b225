"""Memory options for bases that do not fit (issue #20): a bf16-stored base with fp32 trained tensors,
and activation checkpointing, which must not change what a run computes."""

from __future__ import annotations

import pytest
import torch
import toytask
from safetensors.torch import load_file

from lora_repro import identity, train
from lora_repro.build import build
from lora_repro.errors import ConfigError
from lora_repro.hf_compat import checkpointing_enabled

NO_DROPOUT = ["+model.arch.hidden_dropout_prob=0", "+model.arch.attention_probs_dropout_prob=0",
              "train.max_steps=null", "train.epochs=1", "train.device=cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")


def test_bf16_base_keeps_trained_tensors_in_fp32_and_trains(tmp_path):
    cfg = toytask.config(tmp_path, *NO_DROPOUT, "model.dtype=bf16", "train.precision=bf16")
    built = build(cfg, torch.device("cpu"))
    dtypes = {p.dtype for p in built.model.parameters() if not p.requires_grad}
    trained = {n: p.dtype for n, p in built.model.named_parameters() if p.requires_grad}
    assert dtypes == {torch.bfloat16} and set(trained.values()) == {torch.float32}
    assert any(".lora.default.A." in n for n in trained)
    rec = train.run(cfg)
    assert rec["status"] == "success" and rec["run"]["id"].endswith("_basebf16/s0")
    saved = load_file(str(tmp_path / rec["run"]["id"] / "adapter.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
    fp32 = toytask.config(tmp_path, *NO_DROPOUT, "train.precision=bf16")
    assert identity.config_hash(fp32) != identity.config_hash(cfg)


def test_bf16_base_without_bf16_autocast_is_a_one_line_error(tmp_path):
    cfg = toytask.config(tmp_path, *NO_DROPOUT, "model.dtype=bf16")
    with pytest.raises(ConfigError, match=r"model.dtype=bf16 .* needs train.precision=bf16"):
        build(cfg, torch.device("cpu"))


def test_activation_checkpointing_computes_the_same_run(tmp_path):
    """Same loss curve and weights with and without recomputation, and the same run identity (it
    changes memory, not the result)."""
    off = toytask.config(tmp_path / "off", *NO_DROPOUT)
    on = toytask.config(tmp_path / "on", *NO_DROPOUT, "train.activation_checkpointing=true")
    assert identity.run_id(on) == identity.run_id(off)
    assert identity.config_hash(on) == identity.config_hash(off)
    assert checkpointing_enabled(build(on, torch.device("cpu")).model)
    a, b = train.run(off), train.run(on)
    best_a, best_b = a["metrics"]["best"], b["metrics"]["best"]
    assert best_a.keys() == best_b.keys()
    assert all(abs(best_a[k] - best_b[k]) < 1e-5 for k in best_a if isinstance(best_a[k], float))
    wa = load_file(str(tmp_path / "off" / a["run"]["id"] / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "on" / b["run"]["id"] / "adapter.safetensors"))
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6), name
