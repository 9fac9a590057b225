"""Prefix tuning (PreLayer keys/values, PreEmbed virtual tokens) on the four tiny families."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import yaml
from transformers import DynamicCache

from lora_repro.errors import ConfigError
from lora_repro.hf_compat import cache_kwarg, enable_checkpointing
from lora_repro.methods import count_params, method_config, prepare
from lora_repro.methods.prefix import init_from_tokens
from lora_repro.models import ModelConfig, head_params, load_model
from lora_repro.nlg.generate import BeamSettings, beam_search

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
FAMILIES = ["roberta", "bert", "deberta-v2", "gpt2", "llama"]
VARIANTS = {
    "layer": {"name": "prefix_layer", "length": 3},
    "layer_reparam": {"name": "prefix_layer", "length": 3, "reparam": True, "reparam_hidden": 8},
    "embed": {"name": "prefix_embed", "length": 3},
}


def model_cfg(family: str, **arch) -> ModelConfig:
    cfg = ModelConfig(**yaml.safe_load((CONF / f"tiny-{family}.yaml").read_text()))
    cfg.arch.update(arch)
    return cfg


def tiny(family: str, head: str = "classification", seed: int = 0, **arch):
    cfg = model_cfg(family, **arch)
    torch.manual_seed(seed)
    return load_model(cfg, head, num_labels=2).eval(), cfg.family


def batch(seed: int = 1, b: int = 3, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_trains_only_the_prefix_and_head_and_changes_outputs(family, variant):
    model, fam = tiny(family)
    ids, mask = batch()
    base = logits(model, ids, mask)
    prepare(model, method_config(VARIANTS[variant]), fam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    prefix = {n for n in trainable if n.startswith("prefix_tuning.")}
    assert prefix and all(n in head_params(model, fam) for n in trainable - prefix)
    assert not torch.allclose(logits(model, ids, mask), base)  # the prefix is attended to
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss = model(input_ids=ids, attention_mask=mask, labels=torch.tensor([0, 1, 1])).loss
        opt.zero_grad()
        loss.backward()
        assert all(
            model.get_parameter(n).grad.abs().sum() > 0 for n in prefix
        )  # gradients reach it
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


@pytest.mark.parametrize("variant", ["layer", "embed"])
def test_gpt2_lm_head_trains_only_the_prefix(variant):
    model, fam = tiny("gpt2", head="lm")
    prepare(model, method_config(VARIANTS[variant]), fam)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("prefix_tuning.") for n in trainable)
    ids, mask = batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    assert out.logits.shape[:2] == ids.shape  # the prefix positions are not in the output
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == trainable


@pytest.mark.parametrize("family", ["gpt2", "roberta", "bert"])
def test_prefix_layer_equals_feeding_the_keys_values_as_past(family):
    """Independent path (Li & Liang's implementation): the plain model given the prefix keys/values as
    a past-KV cache, real tokens at positions after the prefix, must give the same logits."""
    model, fam = tiny(family)
    prepare(
        model,
        method_config({"name": "prefix_layer", "length": 3, "init": "normal", "init_std": 0.5}),
        fam,
    )
    ids, mask = batch()
    ours = logits(model, ids, mask)
    kv = model.prefix_tuning.kv.detach()
    n_layers, _, p, d = kv.shape
    h = model.config.num_attention_heads
    cache = DynamicCache()
    for i in range(n_layers):
        k, v = (
            kv[i, j].view(p, h, d // h).transpose(0, 1).expand(ids.shape[0], -1, -1, -1)
            for j in (0, 1)
        )
        cache.update(k, v, i)
    model.prefix_tuning.enabled = False
    full_mask = torch.cat([torch.ones(ids.shape[0], p, dtype=mask.dtype), mask], 1)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=full_mask, **{cache_kwarg(model): cache}).logits
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize(
    "family, arch", [("deberta-v2", {"num_hidden_layers": 1, "conv_kernel_size": 0}), ("gpt2", {})]
)
def test_prefix_layer_from_tokens_equals_those_tokens_as_prefix_embed(family, arch):
    """With keys/values computed from real tokens t, PreLayer is PreEmbed with t wherever the prefix
    positions cannot see the text: one block (DeBERTa, no past-KV API to compare with) or causal GPT-2."""
    ids, mask = batch()
    t = torch.tensor([11, 22, 33])
    layer, fam = tiny(family, **arch)
    prepare(layer, method_config({"name": "prefix_layer", "length": 3}), fam)
    init_from_tokens(layer, layer.prefix_tuning, t)
    embed, _ = tiny(family, **arch)
    prepare(embed, method_config({"name": "prefix_embed", "length": 3}), fam)
    init_from_tokens(embed, embed.prefix_tuning, t)
    assert torch.allclose(logits(layer, ids, mask), logits(embed, ids, mask), atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_embed_equals_extra_vocabulary_tokens(family):
    """PreEmbed = P new tokens whose embeddings train, put before the text: compare with a copy of the
    model whose vocabulary was extended by exactly those embeddings, fed the new ids."""
    model, fam = tiny(family)
    ref = copy.deepcopy(model)
    prepare(
        model,
        method_config({"name": "prefix_embed", "length": 3, "init": "normal", "init_std": 0.5}),
        fam,
    )
    vocab = ref.config.vocab_size
    ref.resize_token_embeddings(vocab + 3)
    with torch.no_grad():
        ref.get_input_embeddings().weight[vocab:] = model.prefix_tuning.embedding
    ids, mask = batch()
    new = torch.arange(vocab, vocab + 3).expand(ids.shape[0], -1)
    with torch.no_grad():
        ours = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        want = ref.base_model(
            input_ids=torch.cat([new, ids], 1),
            attention_mask=torch.cat([torch.ones_like(new), mask], 1),
        ).last_hidden_state[:, 3:]
    real = mask.bool()
    assert ours.shape == want.shape
    states = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert {tuple(h.shape) for h in states} == {(*ids.shape, 32)}  # no prefix positions anywhere
    assert torch.allclose(ours[real], want[real], atol=1e-5)


@pytest.mark.parametrize("variant", ["layer", "embed"])
def test_generation_through_the_cache_equals_full_recompute(variant):
    model, fam = tiny("gpt2", head="lm")
    prepare(model, method_config({**VARIANTS[variant], "init": "normal", "init_std": 1.0}), fam)
    ids = batch()[0][[0, 2]]
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )
    cur = ids
    with torch.no_grad():
        for _ in range(5):  # no cache: every step re-reads the whole sequence with the prefix
            nxt = model(input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            cur = torch.cat([cur, nxt], 1)
    assert torch.equal(out, cur)
    # Left padding (batched generation) gives the row's own result.
    padded = torch.cat([torch.zeros(1, 2, dtype=ids.dtype), ids[:1]], 1)
    pmask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids[:1])], 1)
    both = model.generate(
        input_ids=torch.cat([padded, torch.cat([ids[1:], ids[1:, :2]], 1)]),
        attention_mask=torch.cat([pmask, torch.ones_like(pmask)]),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(both[0, -5:], cur[0, -5:])
    beams = model.generate(
        input_ids=ids, max_new_tokens=3, num_beams=3, do_sample=False, pad_token_id=0
    )
    assert beams.shape == (2, ids.shape[1] + 3)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("variant", ["layer", "embed"])
def test_own_beam_search_left_padded_batch_equals_full_recompute(variant, family):
    """The project's beam search (E2E decoding) passes the cache itself: greedy through it, on a
    left-padded batch, must equal recomputing every row alone without a cache; wider beams must give
    each row its own result (GPT-2's absolute positions; Llama's RoPE and grouped-query cache)."""
    model, fam = tiny(family, head="lm")
    prepare(model, method_config({**VARIANTS[variant], "init": "normal", "init_std": 1.0}), fam)
    ids = batch()[0]
    prompts = [ids[0, :7].tolist(), ids[1, :4].tolist(), ids[2, :9].tolist()]  # ragged: left pads
    greedy = BeamSettings(beam_size=1, length_penalty=0.0, no_repeat_ngram_size=0, max_new_tokens=5)
    got = beam_search(model, prompts, greedy, pad_id=0, early_stop=False)
    with torch.no_grad():
        for prompt, out in zip(prompts, got, strict=True):
            cur = torch.tensor([prompt])
            for _ in range(5):
                nxt = model(input_ids=cur, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
                cur = torch.cat([cur, nxt], 1)
            assert out == cur[0, len(prompt) :].tolist()
    wide = BeamSettings(beam_size=3, length_penalty=0.9, no_repeat_ngram_size=2, max_new_tokens=5)
    alone = [beam_search(model, [p], wide, early_stop=False)[0] for p in prompts]
    assert beam_search(model, prompts, wide, pad_id=0, early_stop=False) == alone


def test_reparam_materialize_keeps_outputs_and_drops_the_mlp():
    model, fam = tiny("roberta")
    prepare(model, method_config(VARIANTS["layer_reparam"]), fam)
    ids, mask = batch()
    before = logits(model, ids, mask)
    n_before = count_params(model, fam)
    model.prefix_tuning.materialize()
    assert torch.allclose(logits(model, ids, mask), before, atol=1e-6)
    assert [n for n, _ in model.prefix_tuning.named_parameters()] == ["kv"]
    n_after = count_params(model, fam)
    # |Θ| counts what is kept (layers x keys/values x length x d) before and after; the MLP trains
    assert n_before["method_params"] == n_after["method_params"] == 2 * 2 * 3 * 32
    assert n_after["trainable_params"] < n_before["trainable_params"]


def test_materialized_prefix_saves_and_loads_as_plain_activations(tmp_path):
    from lora_repro.weights.files import read_meta
    from lora_repro.weights.state import load_adapter, save_adapter

    model, fam = tiny("gpt2")
    cfg = method_config(VARIANTS["layer_reparam"])
    prepare(model, cfg, fam)
    model.prefix_tuning.materialize()
    save_adapter(model, tmp_path, cfg, model_cfg("gpt2"))
    assert read_meta(tmp_path).method.reparam is False
    fresh, _ = tiny("gpt2")
    load_adapter(fresh, tmp_path, fam)
    ids, mask = batch()
    assert torch.equal(logits(fresh, ids, mask), logits(model, ids, mask))


def test_gradient_checkpointing_is_refused_for_prefix_layer():
    model, fam = tiny("gpt2")
    prepare(model, method_config(VARIANTS["layer"]), fam)
    enable_checkpointing(model)
    model.train()
    with pytest.raises(ConfigError, match="gradient checkpointing"):
        model(input_ids=batch()[0])


def test_a_deep_copy_has_its_own_prefix():
    model, fam = tiny("bert")
    prepare(model, method_config(VARIANTS["layer"]), fam)
    ids, mask = batch()
    before = logits(model, ids, mask)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.prefix_tuning.kv.add_(1.0)
    assert not torch.allclose(logits(twin, ids, mask), before)
    assert torch.equal(logits(model, ids, mask), before)


@pytest.mark.parametrize(
    "method, reparam", [("prefix_layer", False), ("prefix_layer", True), ("prefix_embed", False)]
)
def test_counts_on_gpt2_medium(method, reparam):
    cfg = ModelConfig(**yaml.safe_load((CONF.parent / "model" / "gpt2-medium.yaml").read_text()))
    model = load_model(cfg, "lm", device="meta")
    values = {"name": method, "length": 7}
    if reparam:
        values["reparam"] = True
    prepare(model, method_config(values), cfg.family)
    n, d, p, hid = 24, 1024, 7, 512
    want = {
        ("prefix_layer", False): n * 2 * d * p,  # the stored activations
        ("prefix_layer", True): n * 2 * d * p,  # |Θ|: what is kept; the MLP trains, then goes
        ("prefix_embed", False): d * p,  # §5.1: d_model x l_p
    }[method, reparam]
    counts = count_params(model, cfg.family)
    assert counts["method_params"] == want
    if reparam:  # trainable while training: the embedding and the MLP
        mlp = p * d + d * hid + hid + hid * n * 2 * d + n * 2 * d
        assert counts["trainable_params"] == mlp


def test_bad_config_and_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="prefix length"):
        method_config({"name": "prefix_layer", "length": 0})
    with pytest.raises(ConfigError, match="prefix init"):
        method_config({"name": "prefix_embed", "init": "zeros"})
    model, fam = tiny("gpt2")
    prepare(model, method_config(VARIANTS["embed"]), fam)
    with pytest.raises(ConfigError, match="3 token ids"):
        init_from_tokens(model, model.prefix_tuning, torch.tensor([1, 2]))
    with pytest.raises(ConfigError, match="already has a prefix"):
        prepare(model, method_config(VARIANTS["layer"]), fam)


# tiny-roberta pads with id 0, so its positions start at 1 (roberta-base: at 2, 514 - 2 = 512 tokens).
@pytest.mark.parametrize(("family", "limit"), [("roberta", 64 - 1), ("bert", 64), ("gpt2", 64)])
def test_a_sequence_that_pushes_past_the_last_position_is_a_clear_error(family, limit):
    """Real tokens shift by l_p; one position too many must be a ConfigError, not an index error
    (on a GPU that is a device-side assert that takes the process down)."""
    model, fam = tiny(family, max_position_embeddings=64)
    prepare(model, method_config(VARIANTS["layer"]), fam)
    ok = torch.randint(5, 1000, (1, limit - 3))
    assert logits(model, ok, torch.ones_like(ok)).shape == (1, 2)
    long = torch.randint(5, 1000, (1, limit - 2))
    with pytest.raises(ConfigError, match=rf"= {limit + 1} positions exceeds the model's {limit}"):
        logits(model, long, torch.ones_like(long))


def test_roberta_base_takes_512_tokens_with_its_prefix():
    from lora_repro.models import hf_config
    from lora_repro.models import position_limit as _position_limit

    cfg = ModelConfig(**yaml.safe_load((CONF / "roberta-base.yaml").read_text()))
    assert _position_limit(hf_config(cfg)) == 512


def test_relative_position_models_have_no_limit():
    model, fam = tiny("deberta-v2", position_biased_input=False, max_position_embeddings=16)
    prepare(model, method_config(VARIANTS["layer"]), fam)
    ids = torch.randint(5, 1000, (1, 20))
    assert model.prefix_tuning.max_positions is None
    assert logits(model, ids, torch.ones_like(ids)).shape == (1, 2)
