"""`lora-repro bench` on tiny models: record schema, counts, the frozen bound's meaning, checkpoint
bytes, ratios and targets. No timing is asserted: timings depend on the machine."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from lora_repro.bench import cli as bench
from lora_repro.bench import measure as bm
from lora_repro.bench import report as bench_report
from lora_repro.bench import variants as bv
from lora_repro.cli import main
from lora_repro.methods import count_params, prepare
from lora_repro.methods.lora import lora_layers


def _spec(**kw) -> dict:
    spec = {
        "model": "tiny-roberta",
        "head": "classification",
        "batch": 2,
        "seq_len": 8,
        "device": "cpu",
        "precision": "fp32",
        "threads": 1,
        "overrides": [],
        "seed": 0,
        "warmup": 0,
        "steps": 1,
    }
    return {**spec, **kw}


def _tiny(name: str = "tiny-roberta", head: str = "classification") -> torch.nn.Module:
    torch.manual_seed(0)
    from lora_repro.models import load_model

    return load_model(bv.model_config(name, []), head, 2).eval()


def test_training_record_counts_every_method():
    methods = ["frozen", "full", "bitfit", "lora", "peft_lora"]
    out = bm.time_training(_spec(methods=methods, steps=2))
    assert set(out) == set(methods)
    for rec in out.values():
        assert rec["status"] == "ok" and len(rec["step_s"]) == len(rec["step_cpu_s"]) == 2
    ref = _tiny()
    head = count_params(prepare(_tiny(), bv.method_cfg("full"), "roberta"), "roberta")
    n_total, n_head = head["total_params"], head["head_params"]
    assert out["full"]["trainable_params"] == out["full"]["total_params"] == n_total
    assert out["frozen"]["trainable_params"] == n_head  # backbone frozen, head trainable
    # LoRA r=8 on q and v (conf/method/lora.yaml): 2 · L̂ · d · r, L̂ = 2 blocks x 2 matrices (§4.2)
    d, r = ref.config.hidden_size, 8
    assert out["lora"]["trainable_params"] == 2 * (2 * 2) * d * r + n_head
    assert out["peft_lora"]["trainable_params"] == out["lora"]["trainable_params"]
    assert out["lora"]["total_params"] == n_total + 2 * (2 * 2) * d * r


def test_peft_on_fused_gpt2_gets_rank_2r_on_c_attn():
    model = bv.build_variant(_tiny("tiny-gpt2", "lm"), "peft_lora", "gpt2")
    shapes = {n.split(".")[-3]: p.shape for n, p in model.named_parameters() if "lora_" in n}
    d = 32
    assert shapes["lora_A"] == (16, d) and shapes["lora_B"] == (3 * d, 16)  # q and v: n·r = 16


def test_frozen_bound_computes_exactly_the_gradients_lora_needs():
    """The bound's gradient at each adapted output, pushed through LoRA's formula, gives LoRA's ∂B."""
    base = _tiny()
    lora = bv.build_variant(base, "lora", "roberta")
    frozen = bv.build_variant(base, "frozen", "roberta")
    cfg = bv.method_cfg("lora")
    grads: dict[int, torch.Tensor] = {}

    def keep(module, args, out):  # replace the bound's hook by one that keeps the gradient
        leaf = out.detach().requires_grad_()
        leaf.register_hook(lambda g: grads.__setitem__(id(module), g))
        return leaf

    targets = bv.target_modules(frozen, "roberta", cfg)
    for m in targets:
        m._forward_hooks.clear()
        m.register_forward_hook(keep)
    inputs = {"input_ids": torch.randint(5, 900, (2, 7)), "labels": torch.tensor([0, 1])}
    frozen(**inputs).loss.backward()
    assert len(grads) == len(targets) == 4
    assert all(p.grad is None for n, p in frozen.named_parameters() if "classifier" not in n)
    seen: dict[str, torch.Tensor] = {}
    for path, layer in lora_layers(lora).items():
        layer.register_forward_hook(lambda m, a, o, path=path: seen.__setitem__(path, a[0]))
    lora(**inputs).loss.backward()  # B = 0 at init, so both models compute the same function
    for path, layer in lora_layers(lora).items():
        upd = layer.lora["default"]
        (key,) = upd.slices
        g = grads[id(frozen.get_submodule(path))].reshape(-1, layer.out_features)
        h = seen[path].detach().reshape(-1, layer.in_features) @ upd.A[key].detach().t()
        torch.testing.assert_close(upd.B[key].grad, upd.scale[key] * g.t() @ h)


def test_memory_record_and_checkpoint_bytes(tmp_path):
    out = bm.measure_memory(_spec(methods=["lora"], steps=1))
    assert out["memory_kind"] == "cpu peak RSS above load"
    assert out["peak_mem_bytes"] == out["peak_above_load_bytes"] >= 0
    model = bv.build_variant(_tiny(), "lora", "roberta")
    save_file(
        {n: p.detach() for n, p in model.named_parameters() if p.requires_grad},
        tmp_path / "a.safetensors",
    )
    assert out["checkpoint_bytes"] == (tmp_path / "a.safetensors").stat().st_size


def test_latency_variants_and_rows():
    spec = _spec(
        model="tiny-gpt2",
        head="lm",
        grid=[(1, 8)],
        methods=["frozen", "full", "bitfit", "lora", "peft_lora"],
    )
    rows = bm.time_latency(spec)["rows"]
    # full and bitfit add no modules: they run exactly the base forward and are not timed again
    assert [r["variant"] for r in rows] == [
        "base",
        "lora_merged",
        "lora_unmerged",
        "peft_lora_unmerged",
    ]
    assert all(len(r["ms"]) == 1 and r["batch"] == 1 and r["seq_len"] == 8 for r in rows)


def _row(method, t, mem):
    return {
        "model": "m",
        "head": "classification",
        "batch": 2,
        "seq_len": 8,
        "method": method,
        "status": "ok",
        "trainable_params": 10,
        "step_time_s": t,
        "tokens_per_s": 16 / t,
        "memory": {
            "peak_mem_bytes": mem,
            "checkpoint_bytes": 40,
            "memory_kind": "cpu peak RSS above load",
        },
    }


def test_ratios_targets_and_outputs(tmp_path):
    record = {
        "settings": {
            "steps": 3,
            "warmup": 1,
            "memory_steps": 2,
            "latency_steps": 3,
            "precision": "fp32",
        },
        "environment": {
            "device": "cpu",
            "threads": 2,
            "torch": "x",
            "transformers": "y",
            "peft": "z",
        },
        "train": [
            _row("frozen", 1.0, 100),
            _row("lora", 1.05, 110),
            _row("peft_lora", 1.2, 100),
            _row("full", 2.0, 400),
        ],
        "latency": [
            {"model": "m", "batch": 1, "seq_len": 8, "variant": "base", "median_ms": 10.0},
            {"model": "m", "batch": 1, "seq_len": 8, "variant": "lora_merged", "median_ms": 10.3},
            {"model": "m", "batch": 1, "seq_len": 8, "variant": "lora_unmerged", "median_ms": 12.0},
        ],
    }
    bench_report.finish(record)
    lora = record["train"][1]
    assert lora["time_vs_frozen"] == pytest.approx(1.05) and lora["mem_vs_frozen"] == 1.1
    assert lora["time_vs_full"] == pytest.approx(0.525) and lora["mem_vs_full"] == 110 / 400
    over = {r["variant"]: r["overhead_pct"] for r in record["latency"]}
    assert over["base"] == 0 and over["lora_merged"] == pytest.approx(3.0)
    assert over["lora_unmerged"] == pytest.approx(20.0)
    met = {t["target"]: (t["value"], t["met"]) for t in record["targets"]}
    assert met["LoRA / frozen-backbone bound, step time"] == (pytest.approx(1.05), True)
    assert met["LoRA / PEFT LoRA, step time"] == (pytest.approx(1.05 / 1.2), True)
    assert met["LoRA / PEFT LoRA, peak memory"] == (pytest.approx(1.1), False)
    assert met["LoRA / full fine-tuning, step time"] == (pytest.approx(0.525), True)
    assert met["merged LoRA latency vs base, 1x8 (|overhead| %)"] == (pytest.approx(3.0), False)
    paths = bench_report.write(record, tmp_path)
    assert json.loads(paths[0].read_text())["targets"] == json.loads(json.dumps(record["targets"]))
    assert "| lora | 10 |" in paths[1].read_text()
    assert paths[2].read_bytes()[:4] == b"\x89PNG"


def test_worker_failure_is_a_record(tmp_path):
    """A fresh `python -m lora_repro.bench --one` process that fails still answers with JSON."""
    failed = bench.run_worker(_spec(job="train", model="no-such-model", methods=["lora"]), tmp_path)
    assert failed["status"] == "failed" and "no-such-model" in failed["error"]


@pytest.mark.slow
def test_end_to_end_default_flow(tmp_path, capsys):
    """Every worker kind in fresh processes, then the outputs (slow: one process per method)."""
    args = [
        "bench",
        "--models",
        "tiny-roberta",
        "--methods",
        "frozen,lora,full",
        "--batch",
        "2",
        "--seq-len",
        "8",
        "--steps",
        "1",
        "--memory-steps",
        "1",
        "--memory-jobs",
        "2",  # concurrent memory workers: each row must still get its own method's record
        "--latency-model",
        "tiny-gpt2",
        "--grid",
        "1x8",
        "--latency-steps",
        "1",
        "--out",
        str(tmp_path),
    ]
    assert main(args) == 0
    record = json.loads((tmp_path / "bench.json").read_text())
    rows = {r["method"]: r for r in record["train"]}
    assert rows["lora"]["memory"]["checkpoint_bytes"] > 0 and rows["lora"]["step_time_s"] > 0
    assert (
        rows["full"]["memory"]["checkpoint_bytes"] > 10 * rows["lora"]["memory"]["checkpoint_bytes"]
    )
    assert math.isfinite(rows["lora"]["time_vs_frozen"])
    assert {r["variant"] for r in record["latency"]} == {"base", "lora_merged", "lora_unmerged"}
    assert "## Targets" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "lora,nope"], "unknown bench method 'nope'; valid: "),
        (["--grid", "3y4"], "bad --grid '3y4'"),
        (["--batch", "0"], "--batch must be > 0"),
        (["--memory-jobs", "0"], "--memory-jobs must be > 0"),
        (["--precision", "fp8"], "unknown --precision 'fp8'"),
    ],
)
def test_bad_input_is_one_line_error(capsys, args, message):
    assert main(["bench", *args, "--models", "tiny-roberta", "--out", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
