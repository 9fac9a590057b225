"""Adapter files and lifecycle: save/load with checks, LoRA switching, merge/export, combine, PEFT."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from lora_repro.errors import ConfigError
from lora_repro.methods import method_config, prepare
from lora_repro.methods.lora import lora_layers
from lora_repro.models import ModelConfig, load_model
from lora_repro.weights.combine import combine
from lora_repro.weights.export import export_merged, export_peft
from lora_repro.weights.files import META, WEIGHTS, read_meta, read_tensors
from lora_repro.weights.state import load_adapter, save_adapter, set_active

CONF = Path(__file__).resolve().parent.parent / "conf" / "model"
FAMILIES = ["roberta", "bert", "deberta-v2", "gpt2", "llama"]


def base_cfg(family: str) -> ModelConfig:
    return ModelConfig(**yaml.safe_load((CONF / f"tiny-{family}.yaml").read_text()))


def tiny(family: str, head: str = "classification", num_labels: int = 2, seed: int = 0):
    torch.manual_seed(seed)  # same seed = same base weights (and same fresh head)
    return load_model(base_cfg(family), head, num_labels).eval()


def adapted(family: str, method: dict, head: str = "classification", seed: int = 7, **kw):
    """A model with the method applied and its trainable tensors moved off their init (as if trained)."""
    model = tiny(family, head, **kw)
    cfg = method_config(method)
    prepare(model, cfg, base_cfg(family).family)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model, cfg


def batch(seed: int = 1, b: int = 3, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 1000, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    return ids, mask


def out(model, head: str = "classification"):
    ids, mask = batch()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


LORA = {"name": "lora", "targets": "qv", "r": 2, "alpha": 4}
METHODS = {
    "lora": LORA,
    "adapter_houlsby": {"name": "adapter_houlsby", "bottleneck": 3},
    "adapter_pfeiffer": {"name": "adapter_pfeiffer", "bottleneck": 3},
    "adapter_lin": {"name": "adapter_lin", "bottleneck": 3},
    "prefix_layer": {"name": "prefix_layer", "length": 2},
    "prefix_embed": {"name": "prefix_embed", "length": 2},
    "bitfit": {"name": "bitfit"},
}


@pytest.mark.parametrize(
    "family, method, head",
    [("roberta", m, "classification") for m in METHODS]
    + [("gpt2", m, "lm") for m in ("lora", "adapter_houlsby", "prefix_layer")]
    + [("deberta-v2", "lora", "classification")],
)
def test_round_trip_saves_only_trainable_tensors_and_reproduces_outputs(
    tmp_path, family, method, head
):
    model, cfg = adapted(family, METHODS[method], head)
    save_adapter(model, tmp_path, cfg, base_cfg(family), head=head, task="sst2")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(load_file(str(tmp_path / WEIGHTS))) == trainable
    meta = json.loads((tmp_path / META).read_text())
    assert meta["method"]["name"] == method and meta["base"]["name"] == f"tiny-{family}"
    assert meta["base"]["family"] == base_cfg(family).family and meta["task"] == "sst2"
    assert set(meta["tensors"]) == trainable
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left

    fresh = tiny(family, head)
    assert not torch.allclose(out(fresh), out(model))
    load_adapter(fresh, tmp_path, base_cfg(family).family, base=base_cfg(family))
    assert torch.equal(out(fresh), out(model))


def test_loading_onto_a_model_that_already_carries_the_method(tmp_path):
    """The trainer's init_from: prepare() first, then load, with a new task head (MNLI -> MRPC)."""
    model, cfg = adapted("roberta", LORA, num_labels=3)
    save_adapter(model, tmp_path, cfg, base_cfg("roberta"))
    target = tiny("roberta", num_labels=2, seed=0)
    prepare(target, method_config(LORA), "roberta")
    with pytest.raises(ConfigError, match="num_labels 3"):
        load_adapter(target, tmp_path, "roberta", base=base_cfg("roberta"))
    head = target.classifier.out_proj.weight.clone()
    load_adapter(target, tmp_path, "roberta", base=base_cfg("roberta"), with_head=False)
    assert torch.equal(target.classifier.out_proj.weight, head)
    for name, p in model.named_parameters():
        if ".lora." in name:
            assert torch.equal(target.get_parameter(name), p)
    assert len(lora_layers(target)) == 4  # applied once, not twice


# -- bad files -------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model, cfg = adapted("roberta", LORA)
    save_adapter(model, tmp_path, cfg, base_cfg("roberta"))
    return tmp_path


def unchanged(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_pickle_renamed_safetensors_is_refused_and_never_unpickled(saved, tmp_path_factory):
    marker = tmp_path_factory.mktemp("m") / "executed"
    boom = _Boom()
    boom.marker = str(marker)
    (saved / WEIGHTS).write_bytes(pickle.dumps({"x": boom}))
    with pytest.raises(ConfigError, match="pickle"):
        load_adapter(tiny("roberta"), saved, "roberta")
    torch.save({"x": torch.zeros(2)}, saved / WEIGHTS)  # torch.save's zip format too
    with pytest.raises(ConfigError, match="pickle"):
        read_tensors(saved)
    assert not marker.exists()


def test_a_safetensors_header_length_starting_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """A safetensors file begins with its header's length: 128 + 256·k bytes puts 0x80 (pickle's
    first byte) first. Such a file is valid and must load."""
    for pad in range(64):
        save_file({"x": torch.arange(3.0)}, str(tmp_path / WEIGHTS), metadata={"p": "a" * pad})
        if (tmp_path / WEIGHTS).read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no padding gave a header length of 0x80 mod 256")
    assert torch.equal(read_tensors(tmp_path)["x"], torch.arange(3.0))


def test_a_truncated_file_is_refused(saved):
    data = (saved / WEIGHTS).read_bytes()
    (saved / WEIGHTS).write_bytes(data[: len(data) - 10])
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        load_adapter(tiny("roberta"), saved, "roberta")


def test_tensors_that_disagree_with_the_json_are_refused(saved):
    tensors = load_file(str(saved / WEIGHTS))
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, str(saved / WEIGHTS))
    with pytest.raises(ConfigError, match="does not match"):
        load_adapter(tiny("roberta"), saved, "roberta")


def _rewrite(saved, edit):
    tensors = load_file(str(saved / WEIGHTS))
    edit(tensors)
    save_file(tensors, str(saved / WEIGHTS))
    meta = json.loads((saved / META).read_text())
    meta["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    (saved / META).write_text(json.dumps(meta))


def test_wrong_shapes_are_one_error_and_the_model_is_left_untouched(saved):
    key = next(k for k in load_file(str(saved / WEIGHTS)) if k.endswith(".A.q"))
    _rewrite(saved, lambda t: t.__setitem__(key, torch.zeros(5, 32)))
    model = tiny("roberta")
    before = unchanged(model)
    with pytest.raises(ConfigError, match=r"has shape \(5, 32\), model needs \(2, 32\)"):
        load_adapter(model, saved, "roberta")
    assert not lora_layers(model)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_missing_tensor_is_refused(saved):
    key = next(k for k in load_file(str(saved / WEIGHTS)) if k.endswith(".B.v"))
    _rewrite(saved, lambda t: t.pop(key))
    with pytest.raises(ConfigError, match=r"missing .*B\.v"):
        load_adapter(tiny("roberta"), saved, "roberta")


def test_the_wrong_base_is_refused(saved):
    other = ModelConfig(**{**base_cfg("roberta").__dict__, "name": "roberta-base"})
    with pytest.raises(ConfigError, match=r"name 'tiny-roberta' \(adapter\) vs 'roberta-base'"):
        load_adapter(tiny("roberta"), saved, "roberta", base=other)
    with pytest.raises(ConfigError, match=r"model_type 'roberta' \(adapter\) vs 'bert'"):
        load_adapter(tiny("bert"), saved, "bert")
    bigger = base_cfg("roberta")
    bigger.arch["hidden_size"] = 48
    torch.manual_seed(0)
    with pytest.raises(ConfigError, match=r"hidden_size 32 \(adapter\) vs 48"):
        load_adapter(load_model(bigger), saved, "roberta")


def test_missing_or_broken_json_is_a_clear_error(saved):
    meta = json.loads((saved / META).read_text())
    (saved / META).write_text(json.dumps({**meta, "method": {"name": "dora"}}))
    with pytest.raises(ConfigError, match="unknown method 'dora'"):
        read_meta(saved)
    (saved / META).write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_meta(saved)
    (saved / META).unlink()
    with pytest.raises(ConfigError, match="not found"):
        read_meta(saved)
    with pytest.raises(ConfigError, match="does not exist"):
        read_meta(saved / "nowhere")


# -- several LoRA adapters on one base -------------------------------------------------------------
def test_switching_lora_adapters_equals_a_fresh_model_with_only_that_one(tmp_path):
    one, cfg1 = adapted("roberta", LORA, seed=1)
    two, cfg2 = adapted("roberta", {**LORA, "targets": "qkvo", "r": 3, "ranks": {"o": 1}}, seed=2)
    save_adapter(one, tmp_path / "one", cfg1, base_cfg("roberta"))
    save_adapter(two, tmp_path / "two", cfg2, base_cfg("roberta"))
    base_out = out(tiny("roberta"))

    model = tiny("roberta")
    w0 = model.roberta.encoder.layer[0].attention.self.query.weight
    load_adapter(model, tmp_path / "one", "roberta", name="one")
    load_adapter(model, tmp_path / "two", "roberta", name="two")
    assert torch.equal(out(model), out(two))  # the last loaded is active
    for _ in range(2):
        set_active(model, "one")
        assert torch.equal(out(model), out(one))
        set_active(model, "two")
        assert torch.equal(out(model), out(two))
        set_active(model, None)
        assert torch.equal(out(model), base_out)
    q = model.roberta.encoder.layer[0].attention.self.query
    assert q.base_layer.weight is w0  # the base was never reloaded or copied
    with pytest.raises(ConfigError, match=r"has shape \(3, 32\), model needs \(2, 32\)"):
        load_adapter(model, tmp_path / "two", "roberta", name="one")
    with pytest.raises(ConfigError, match=r"has shape \(2, 32\), model needs \(3, 32\)"):
        load_adapter(model, tmp_path / "one", "roberta", name="two")
    load_adapter(model, tmp_path / "one", "roberta", name="one")  # refilling a slot is fine
    assert torch.equal(out(model), out(one))
    with pytest.raises(ConfigError, match="no LoRA adapter 'three'"):
        set_active(model, "three")


# -- merge and export ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, head", [(f, "classification") for f in FAMILIES] + [("gpt2", "lm")]
)
def test_merged_export_loads_with_transformers_alone_and_matches(tmp_path, family, head):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    targets = "qvog" if family == "llama" else "qvof1"  # an FFN input matrix too
    model, _ = adapted(family, {**LORA, "targets": targets}, head)
    want = out(model)
    export_merged(model, tmp_path / "merged")
    auto = AutoModelForCausalLM if head == "lm" else AutoModelForSequenceClassification
    plain = auto.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in k for k in plain.state_dict())
    assert torch.allclose(out(plain), want, atol=1e-5)


def test_adapters_and_prefixes_cannot_be_merged(tmp_path):
    model, _ = adapted("roberta", METHODS["adapter_pfeiffer"])
    with pytest.raises(ConfigError, match="cannot be merged"):
        export_merged(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()


# -- combine ---------------------------------------------------------------------------------------
def _dense_deltas(adapters, weights):
    """Σ w_i (α_i/r_i) B_i A_i per (module, letter), computed directly from the saved tensors."""
    total = {}
    for (tensors, cfg), w in zip(adapters, weights, strict=True):
        for key, a in tensors.items():
            if f".lora.{cfg.adapter_name}.A." not in key:
                continue
            letter = key.rsplit(".", 1)[1]
            b = tensors[key.replace(".A.", ".B.")]
            r = cfg.ranks.get(letter, cfg.r)
            path = key.split(".lora.")[0]
            d = w * (cfg.alpha / r) * (b.double() @ a.double())
            total[(path, letter)] = total.get((path, letter), 0) + d
    return total


def _combined_deltas(tensors, cfg):
    return _dense_deltas([(tensors, cfg)], [1.0])


@pytest.fixture
def two_adapters():
    out_ = []
    for seed, r in ((1, 2), (2, 3)):
        model, cfg = adapted("gpt2", {**LORA, "r": r, "alpha": 2 * r + 1}, "lm", seed=seed)
        out_.append(({n: p.detach() for n, p in model.named_parameters() if ".lora." in n}, cfg))
    return out_


def test_combine_exact_is_the_weighted_sum_of_updates(two_adapters):
    weights = [0.7, -0.4]
    tensors, cfg, report = combine(two_adapters, weights)
    assert cfg.r == 5 and report["relative_error"] == 0.0
    want, got = _dense_deltas(two_adapters, weights), _combined_deltas(tensors, cfg)
    assert want.keys() == got.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6)
    # The combined adapter loads and acts: its layer delta equals the weighted sum.
    model = tiny("gpt2", "lm")
    prepare(model, cfg, "gpt2")
    with torch.no_grad():
        for n, v in tensors.items():
            model.get_parameter(n).copy_(v)
    layer = model.transformer.h[0].attn.c_attn
    expected = torch.zeros(96, 32, dtype=torch.float64)
    expected[:32] = want[("transformer.h.0.attn.c_attn", "q")]
    expected[64:] = want[("transformer.h.0.attn.c_attn", "v")]
    assert torch.allclose(layer.full_delta("default").double(), expected, atol=1e-6)


def test_combine_truncated_is_the_best_rank_k_approximation(two_adapters):
    weights = [1.0, 1.0]
    tensors, cfg, report = combine(two_adapters, weights, rank=2)
    assert cfg.r == 2
    want, got = _dense_deltas(two_adapters, weights), _combined_deltas(tensors, cfg)
    lost = total = 0.0
    for k, dense in want.items():
        u, s, vt = np.linalg.svd(dense.numpy())  # independent: numpy's SVD of the dense ΔW
        best = (u[:, :2] * s[:2]) @ vt[:2]
        assert np.allclose(got[k].numpy(), best, atol=1e-5)
        err = np.sqrt((s[2:] ** 2).sum() / (s**2).sum())
        assert report["relative_error_per_matrix"][f"{k[0]}.{k[1]}"] == pytest.approx(err, rel=1e-6)
        lost, total = lost + (s[2:] ** 2).sum(), total + (s**2).sum()
    assert report["relative_error"] == pytest.approx(np.sqrt(lost / total), rel=1e-6)
    assert 0 < report["relative_error"] < 1


def test_combine_refuses_mismatched_adapters(two_adapters):
    other, cfg = adapted("gpt2", {**LORA, "targets": "q"}, "lm")
    mixed = [two_adapters[0], ({n: p for n, p in other.named_parameters() if ".lora." in n}, cfg)]
    with pytest.raises(ConfigError, match="same matrices"):
        combine(mixed, [1, 1])
    with pytest.raises(ConfigError, match="one weight per adapter"):
        combine(two_adapters, [1.0])


# -- PEFT ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, method, head",
    [
        ("roberta", LORA, "classification"),
        ("bert", {**LORA, "targets": "qvf2"}, "classification"),
        ("deberta-v2", {**LORA, "targets": "qk", "ranks": {"k": 3}}, "classification"),
        ("gpt2", LORA, "classification"),
        ("gpt2", {**LORA, "targets": "qvo", "ranks": {"v": 3}, "rslora": True}, "lm"),
        ("llama", {**LORA, "targets": "all", "ranks": {"d": 3}}, "lm"),  # PEFT names these natively
        ("llama", LORA, "classification"),
    ],
)
def test_peft_export_loads_in_peft_and_matches(tmp_path, family, method, head):
    from peft import PeftModel

    model, cfg = adapted(family, method, head)
    want = out(model)
    export_peft(model, tmp_path / "peft", base_cfg(family).family, cfg, head)
    peft_model = PeftModel.from_pretrained(tiny(family, head), tmp_path / "peft").eval()
    assert torch.allclose(out(peft_model), want, atol=1e-5)
    if family == "gpt2":  # q and v slices become one c_attn update of rank r_q + r_v
        a = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
        key = "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"
        assert a[key].shape[0] == 2 + method.get("ranks", {}).get("v", 2)
