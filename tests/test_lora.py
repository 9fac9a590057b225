"""LoRA layer: identity at init, merge/unmerge, fused GPT-2 slices, per-target rank, layer choice."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from conftest import TINY, tiny_model

from lora_repro.errors import ConfigError
from lora_repro.methods import count_params, prepare
from lora_repro.methods.lora import Config, LoRALayer, lora_layers, parse_targets


def _randomise_b(model: torch.nn.Module, seed: int = 3) -> None:
    """Give B a non-zero value so the adapter is not a no-op (B = 0 at init, §4.1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            for b in layer.lora["default"].B.values():
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("targets", ["qv", "qkvof1f2", "all"])
def test_fresh_adapter_is_identity(name, targets, input_ids):
    if targets == "qkvof1f2" and model_family(name) == "llama":
        targets = "qkvogud"  # the gated MLP's three matrices
    model = tiny_model(name)
    before = _logits(model, input_ids)
    prepare(model, Config(targets=targets, dropout=0.1), model_family(name))
    assert torch.equal(_logits(model, input_ids), before)


@pytest.mark.parametrize("name", TINY)
def test_merge_equals_unmerged_and_unmerge_restores(name, input_ids):
    model = tiny_model(name)
    base_weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare(model, Config(targets="qkvo", r=4, alpha=16), model_family(name))
    _randomise_b(model)
    unmerged = _logits(model, input_ids)
    assert not torch.allclose(unmerged, _logits(tiny_model(name), input_ids), atol=1e-4)
    for layer in lora_layers(model).values():
        layer.merge()
    torch.testing.assert_close(_logits(model, input_ids), unmerged, atol=1e-5, rtol=0)
    for layer in lora_layers(model).values():
        layer.unmerge()
    restored = {n.replace(".base_layer", ""): p for n, p in model.named_parameters()}
    for n, w in base_weights.items():
        torch.testing.assert_close(restored[n], w, atol=1e-6, rtol=0)


def test_merged_forward_is_the_plain_base_layer():
    layer = LoRALayer(torch.nn.Linear(8, 6))
    from lora_repro.methods.lora import LoRAUpdate

    upd = LoRAUpdate(8, {"x": (0, 6)}, {"x": 2}, alpha=2.0)
    torch.nn.init.normal_(upd.B["x"])
    layer.add("default", upd)
    layer.merge()
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), layer.base_layer(x))


def test_gpt2_qv_slices_leave_k_exactly_untouched(input_ids):
    model = tiny_model("tiny-gpt2")
    base = copy.deepcopy(model)
    prepare(model, Config(targets="qv", r=4, alpha=32), "gpt2")
    _randomise_b(model)
    layers = lora_layers(model)
    assert len(layers) == 2  # one wrapped c_attn per block, holding two slices
    for layer in layers.values():
        upd = layer.lora["default"]
        d = layer.out_features // 3
        assert upd.slices == {"q": (0, d), "v": (2 * d, 3 * d)}
        delta = layer.full_delta("default")
        assert torch.count_nonzero(delta[d : 2 * d]) == 0  # k rows: exactly zero
        for key, (s, e) in upd.slices.items():
            expected = (32 / 4) * upd.B[key].detach() @ upd.A[key].detach()  # independent B A
            torch.testing.assert_close(delta[s:e], expected)
        # The forward pass too: c_attn's k outputs equal the base layer's bit for bit.
        x = torch.randn(2, 5, layer.in_features)
        with torch.no_grad():
            out, ref = layer(x), layer.base_layer(x)
        assert torch.equal(out[..., d : 2 * d], ref[..., d : 2 * d])
        assert not torch.allclose(out[..., :d], ref[..., :d])
    # Merged: W changes only in the q and v columns of Conv1D's (in, out) weight.
    name = next(iter(layers))
    w0 = base.get_submodule(name).weight
    layers[name].merge()
    diff = layers[name].base_layer.weight - w0
    d = w0.shape[1] // 3
    assert torch.count_nonzero(diff[:, d : 2 * d]) == 0
    assert torch.count_nonzero(diff[:, :d]) > 0 and torch.count_nonzero(diff[:, 2 * d :]) > 0


def test_only_a_and_b_train_besides_the_head():
    model = tiny_model("tiny-roberta")
    prepare(model, Config(targets="qv"), "roberta")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for n in trainable:
        assert ".lora.default.A." in n or ".lora.default.B." in n or n.startswith("classifier.")


def test_gradients_reach_a_and_b_only(input_ids):
    model = tiny_model("tiny-gpt2").train()
    prepare(model, Config(targets="qv", dropout=0.1), "gpt2")
    _randomise_b(model)
    model(input_ids=input_ids).logits.sum().backward()
    for n, p in model.named_parameters():
        if ".lora." in n:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        elif not n.startswith("score."):
            assert p.grad is None, n


def test_per_target_rank_and_layer_selection():
    model = tiny_model("tiny-roberta")
    prepare(model, Config(targets="qv", r=8, ranks={"v": 4}, layers=[-1]), "roberta")
    layers = lora_layers(model)
    assert sorted(layers) == [
        "roberta.encoder.layer.1.attention.self.query",
        "roberta.encoder.layer.1.attention.self.value",
    ]
    q = layers["roberta.encoder.layer.1.attention.self.query"].lora["default"]
    v = layers["roberta.encoder.layer.1.attention.self.value"].lora["default"]
    assert q.A["q"].shape == (8, 32) and v.A["v"].shape == (4, 32)
    assert q.scale["q"] == 8 / 8 and v.scale["v"] == 8 / 4
    assert count_params(model, "roberta")["method_params"] == 8 * 32 * 2 + 4 * 32 * 2


def test_rslora_scale_and_gaussian_init():
    model = tiny_model("tiny-bert")
    prepare(model, Config(targets="q", r=4, alpha=8, rslora=True, init="gaussian"), "bert")
    upd = next(iter(lora_layers(model).values())).lora["default"]
    assert upd.scale["q"] == pytest.approx(8 / 2)
    assert upd.A["q"].std().item() == pytest.approx(1 / 4, rel=0.3)


def test_dropout_is_inactive_in_eval(input_ids):
    model = tiny_model("tiny-bert")
    prepare(model, Config(targets="qv", dropout=0.5), "bert")
    _randomise_b(model)
    assert torch.equal(_logits(model, input_ids), _logits(model, input_ids))


def test_parse_targets():
    assert parse_targets("qkvo") == ["q", "k", "v", "o"]
    assert parse_targets("qvf1f2") == ["q", "v", "f1", "f2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "lora r must be > 0, got 0"),
        ({"r": -2}, "lora r must be > 0"),
        ({"alpha": 0}, "lora alpha must be > 0"),
        ({"dropout": 1.0}, "dropout must be in [0, 1)"),
        ({"init": "xavier"}, "unknown lora init 'xavier'"),
        ({"ranks": {"q": 0}}, "rank for 'q' must be > 0"),
    ],
)
def test_bad_config_values(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"targets": "qx"}, "unknown target letter .* 'x'; valid: f1, f2, k, o, q, v"),
        ({"targets": "qq"}, "target letters repeat"),
        ({"r": 33}, "rank 33 for 'q' exceeds the matrix size 32x32; valid ranks: 1..32"),
        ({"ranks": {"k": 2}}, "unknown letter in lora ranks 'k'"),
        ({"layers": [5]}, "layer index 5 out of range; valid: 0..1"),
    ],
)
def test_bad_injection(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        prepare(tiny_model("tiny-roberta"), Config(**{"targets": "qv", **kwargs}), "roberta")


def model_family(name: str) -> str:
    return {"tiny-roberta": "roberta", "tiny-bert": "bert"}.get(name, name[5:])
