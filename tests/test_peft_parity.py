"""Parity with PEFT's LoRA where PEFT can express the setting: the same A and B give the same logits.

GPT-2: PEFT can only adapt the whole fused c_attn with one A and B. Our per-slice adapters on q, k, v
(or q, v) equal that at rank 3r (2r) with the slices' A stacked and B block-diagonal, at α scaled by the
same factor so that α/r is unchanged.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_model

from lora_repro.methods import prepare
from lora_repro.methods.lora import Config, lora_layers

peft = pytest.importorskip("peft")

PEFT_NAMES = {
    "tiny-roberta": ("roberta", {"q": "query", "v": "value"}),
    "tiny-bert": ("bert", {"q": "query", "v": "value"}),
    "tiny-deberta-v2": ("deberta-v2", {"q": "query_proj", "v": "value_proj"}),
    "tiny-llama": ("llama", {"q": "q_proj", "v": "v_proj"}),  # v_proj is narrower (2 kv heads)
}


def _nontrivial(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for b in layer.lora["default"].B.values():
                b.copy_(torch.randn(b.shape, generator=g))


def _peft_model(base, target_modules, r, alpha, fan_in_fan_out=False):
    cfg = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=target_modules,
        lora_dropout=0.0,
        fan_in_fan_out=fan_in_fan_out,
        init_lora_weights=False,
    )
    return peft.get_peft_model(base, cfg).eval()


def _peft_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {
        n.removeprefix("base_model.model."): m
        for n, m in model.named_modules()
        if isinstance(m, LoraLayer)
    }


def _assert_same_logits(ours, theirs, peft_layers, input_ids) -> None:
    """Copy our (single-slice) A, B into PEFT's layers; the two models then give the same logits."""
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            letter = next(iter(layer.lora["default"].slices))
            p = peft_layers[path]
            p.lora_A["default"].weight.copy_(layer.lora["default"].A[letter])
            p.lora_B["default"].weight.copy_(layer.lora["default"].B[letter])
        a, b = ours(input_ids=input_ids).logits, theirs(input_ids=input_ids).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list(PEFT_NAMES))
def test_qv_logits_match_peft(name, input_ids):
    family, names = PEFT_NAMES[name]
    base = tiny_model(name)
    ours = copy.deepcopy(base)
    prepare(ours, Config(targets="qv", r=4, alpha=8), family)
    _nontrivial(ours)
    theirs = _peft_model(copy.deepcopy(base), list(names.values()), r=4, alpha=8)
    peft_layers = _peft_layers(theirs)
    assert len(peft_layers) == len(lora_layers(ours)) == 4
    _assert_same_logits(ours, theirs, peft_layers, input_ids)


@pytest.mark.parametrize("targets", ["qkv", "qv"])
def test_gpt2_fused_c_attn_matches_peft_whole_c_attn(targets, input_ids):
    base = tiny_model("tiny-gpt2")
    ours = copy.deepcopy(base)
    r, alpha, n = 4, 16, len(targets)
    prepare(ours, Config(targets=targets, r=r, alpha=alpha), "gpt2")
    _nontrivial(ours)
    theirs = _peft_model(copy.deepcopy(base), ["c_attn"], n * r, n * alpha, fan_in_fan_out=True)
    peft_layers = _peft_layers(theirs)
    with torch.no_grad():
        for path, layer in lora_layers(ours).items():
            upd = layer.lora["default"]
            a = torch.cat([upd.A[k] for k in upd.slices])  # stacked A: (n r) x d_in
            b = torch.zeros(layer.out_features, n * r)  # block B: slice rows x its own r columns
            for i, (k, (s, e)) in enumerate(upd.slices.items()):
                b[s:e, i * r : (i + 1) * r] = upd.B[k]
            peft_layers[path].lora_A["default"].weight.copy_(a)
            peft_layers[path].lora_B["default"].weight.copy_(b)
        x, y = ours(input_ids=input_ids).logits, theirs(input_ids=input_ids).logits
    torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_llama_all_seven_matrices_match_peft(input_ids):
    """Every Llama matrix (q k v o, gate up down), trained-looking B, logits equal to PEFT's."""
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "g": "gate_proj",
             "u": "up_proj", "d": "down_proj"}  # fmt: skip
    base = tiny_model("tiny-llama", head="lm")
    ours = copy.deepcopy(base)
    prepare(ours, Config(targets="all", r=4, alpha=8), "llama")
    _nontrivial(ours)
    theirs = _peft_model(copy.deepcopy(base), list(names.values()), r=4, alpha=8)
    peft_layers = _peft_layers(theirs)
    assert len(peft_layers) == len(lora_layers(ours)) == 2 * 7
    _assert_same_logits(ours, theirs, peft_layers, input_ids)
