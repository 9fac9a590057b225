"""Bottleneck adapters (Houlsby / Pfeiffer / Lin) on the four tiny families."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from lora_repro.errors import ConfigError
from lora_repro.methods import count_params, method_config, prepare
from lora_repro.methods.adapters import AdapterAfter, Bottleneck
from lora_repro.models import ModelConfig, blocks, head_params, load_model

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
FAMILIES = ["roberta", "bert", "deberta-v2", "gpt2", "llama"]
ADAPTERS = ["adapter_houlsby", "adapter_pfeiffer", "adapter_lin"]


def tiny(family: str, head: str = "classification", seed: int = 0):
    cfg = ModelConfig(**yaml.safe_load((CONF / f"tiny-{family}.yaml").read_text()))
    torch.manual_seed(seed)
    return load_model(cfg, head, num_labels=2).eval(), cfg.family


def batch(seed: int = 1, b: int = 3, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0  # one padded row
    ids[1, 6:] = 0
    return ids, mask


def train_steps(model, ids, mask, head: str, steps: int = 3):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        if head == "lm":
            labels = ids.masked_fill(mask == 0, -100)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        else:
            loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


def changed_params(model, before: dict) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ADAPTERS)
def test_trains_only_adapters_and_head(family, method):
    model, fam = tiny(family)
    prepare(model, method_config({"name": method, "bottleneck": 4}), fam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    adapter = {n for n in trainable if ".adapter." in n}
    n_slots = 2 if method == "adapter_houlsby" else 1
    per_adapter = 6 if method == "adapter_lin" else 4  # down/up weight+bias (+ LayerNorm w, b)
    assert len(adapter) == 2 * n_slots * per_adapter  # 2 blocks
    assert trainable - adapter, "the task head trains too"
    assert all(n in head_params(model, fam) for n in trainable - adapter)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, *batch(), "classification")
    assert changed_params(model, before) == trainable


@pytest.mark.parametrize("method", ADAPTERS)
def test_gpt2_lm_head_trains_only_adapters(method):
    model, fam = tiny("gpt2", head="lm")
    prepare(model, method_config({"name": method, "bottleneck": 4}), fam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)  # LM head is tied: frozen
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train_steps(model, *batch(), "lm")
    assert changed_params(model, before) == trainable


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ADAPTERS)
def test_zero_init_is_exactly_the_base(family, method):
    model, fam = tiny(family)
    ids, mask = batch()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        prepare(model, method_config({"name": method, "bottleneck": 4, "init": "zero"}), fam)
        out = model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(out, base, atol=1e-6, rtol=0)
    ups = [m.adapter.up.weight for m in model.modules() if isinstance(m, AdapterAfter)]
    assert ups and all(torch.count_nonzero(w) == 0 for w in ups)


def test_near_identity_init_is_near_but_not_exactly_the_base():
    model, fam = tiny("roberta")
    ids, mask = batch()
    with torch.no_grad():
        base = model(input_ids=ids, attention_mask=mask).logits
        prepare(model, method_config({"name": "adapter_houlsby", "bottleneck": 4}), fam)
        out = model(input_ids=ids, attention_mask=mask).logits
    diff = (out - base).abs().max().item()
    assert 0 < diff < 1e-4
    w = next(m.adapter.down.weight for m in model.modules() if isinstance(m, AdapterAfter))
    assert w.abs().max() <= 2e-3 + 1e-9  # truncated at 2σ, σ = 1e-3


def test_houlsby_placement_in_post_ln_block_matches_manual_computation():
    """RoBERTa: attention output = LN(A(dropout(dense(x))) + input) — before the residual and LN."""
    model, fam = tiny("roberta")
    prepare(
        model, method_config({"name": "adapter_houlsby", "bottleneck": 4, "init_std": 0.3}), fam
    )
    out_mod = blocks(model, fam)[0].attention.output
    adapter = out_mod.dropout.adapter
    x, inp = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    h = F.linear(x, out_mod.dense.weight, out_mod.dense.bias)
    h = h + F.linear(
        F.relu(F.linear(h, adapter.down.weight, adapter.down.bias)),
        adapter.up.weight,
        adapter.up.bias,
    )
    ln = out_mod.LayerNorm
    want = F.layer_norm(h + inp, (32,), ln.weight, ln.bias, ln.eps)
    with torch.no_grad():
        assert torch.allclose(out_mod(x, inp), want, atol=1e-6)


def test_lin_adapter_in_pre_ln_gpt2_mlp_matches_manual_computation():
    """GPT-2: mlp(x) = A(c_proj(act(c_fc(x)))), A(h) = h + W_up ReLU(W_down LN(h)) (Lin et al. 2020)."""
    model, fam = tiny("gpt2")
    prepare(model, method_config({"name": "adapter_lin", "bottleneck": 4, "init_std": 0.3}), fam)
    mlp = blocks(model, fam)[1].mlp
    a = mlp.dropout.adapter
    assert isinstance(a, Bottleneck) and a.norm is not None
    assert not isinstance(blocks(model, fam)[1].attn.resid_dropout, AdapterAfter)  # FFN only
    x = torch.randn(2, 5, 32)
    h = x @ mlp.c_fc.weight + mlp.c_fc.bias
    h = mlp.act(h) @ mlp.c_proj.weight + mlp.c_proj.bias
    z = F.layer_norm(h, (32,), a.norm.weight, a.norm.bias, a.norm.eps)
    want = h + F.linear(F.relu(F.linear(z, a.down.weight, a.down.bias)), a.up.weight, a.up.bias)
    with torch.no_grad():
        assert torch.allclose(mlp(x), want, atol=1e-6)


def test_adapter_drop_leaves_lower_blocks_alone():
    model, fam = tiny("bert")
    prepare(
        model, method_config({"name": "adapter_houlsby", "bottleneck": 4, "drop_lower": 1}), fam
    )
    names = [n for n, p in model.named_parameters() if ".adapter." in n]
    assert names and all(".layer.1." in n for n in names)
    with pytest.raises(ConfigError, match="drop_lower"):
        prepare(tiny("bert")[0], method_config({"name": "adapter_pfeiffer", "drop_lower": 2}), fam)
    with pytest.raises(ConfigError, match="no block left"):
        cfg = method_config({"name": "adapter_pfeiffer", "drop_lower": 1, "layers": [0]})
        prepare(tiny("bert")[0], cfg, fam)


def test_train_layernorm_option():
    model, fam = tiny("roberta")
    prepare(model, method_config({"name": "adapter_pfeiffer", "train_layernorm": True}), fam)
    ln = {n for n, p in model.named_parameters() if p.requires_grad and "LayerNorm" in n}
    assert len(ln) == 2 * 2 * 2  # 2 blocks x (attention + output LayerNorm) x (weight, bias)


@pytest.mark.parametrize(
    "method, per_block, ln",
    [("adapter_houlsby", 2, 0), ("adapter_pfeiffer", 1, 0), ("adapter_lin", 1, 1)],
)
def test_count_is_the_papers_formula_on_roberta_base(method, per_block, ln):
    """§5.1: |Θ| = L̂_Adpt·(2·d·r + r + d) + 2·L̂_LN·d, here d = 768, 12 blocks, r = 16."""
    cfg = ModelConfig(**yaml.safe_load((CONF / "roberta-base.yaml").read_text()))
    model = load_model(cfg, device="meta")
    prepare(model, method_config({"name": method, "bottleneck": 16}), cfg.family)
    d, r, n = 768, 16, 12
    want = n * per_block * (2 * d * r + r + d) + 2 * n * ln * d
    assert count_params(model, cfg.family)["method_params"] == want


@pytest.mark.parametrize(
    "values, match",
    [
        ({"bottleneck": 0}, "bottleneck"),
        ({"activation": "sigmoid"}, "activation"),
        ({"init": "xavier"}, "init"),
        ({"drop_lower": -1}, "drop_lower"),
        ({"size": 3}, "unknown key"),
    ],
)
def test_bad_config_is_a_one_line_error(values, match):
    with pytest.raises(ConfigError, match=match):
        method_config({"name": "adapter_houlsby", **values})


def test_second_adapter_on_the_same_slot_is_refused():
    model, fam = tiny("gpt2")
    from lora_repro.methods import adapters

    adapters.apply(model, adapters.PfeifferConfig(bottleneck=2), fam)
    with pytest.raises(ConfigError, match="already has an adapter"):
        adapters.apply(model, adapters.HoulsbyConfig(bottleneck=2), fam)
