"""The training loop: losses against independent computations, optimizer groups, schedule, and short
in-process runs on the synthetic toy task (tests/toytask.py) with tiny random models."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
import toytask
import yaml
from safetensors.torch import load_file

from lora_repro import evaluate, losses, optim, record, train
from lora_repro.errors import ConfigError
from lora_repro.models import ModelConfig, load_model


@pytest.fixture(autouse=True)
def _toy(monkeypatch):
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "glue", "toytask")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest and deterministic
    yield
    torch.set_num_threads(threads)


# --- losses (lm_loss itself: tests/test_nlg_loss.py) ---------------------------------------------


def test_classification_and_regression_loss_sums():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0])
    expected = -(torch.log_softmax(logits, -1)[torch.arange(2), labels]).sum()
    assert torch.allclose(losses.loss_sum(logits, labels, "classification", 0.0), expected)
    reg = losses.loss_sum(
        torch.tensor([[1.0], [3.0]]), torch.tensor([0.5, 2.0]), "classification", 0
    )
    assert reg.item() == pytest.approx(0.25 + 1.0)


# --- optimizer and schedule -------------------------------------------------------------------------


def test_weight_decay_skips_biases_and_layernorm_and_frozen_params():
    from lora_repro.methods import method_config, prepare

    cfg = ModelConfig(**yaml.safe_load(Path("conf/model/tiny-roberta.yaml").read_text()))
    model = load_model(cfg)
    prepare(model, method_config({"name": "full"}), "roberta")
    model.roberta.embeddings.word_embeddings.weight.requires_grad_(False)
    decay, no_decay = optim.param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "roberta.encoder.layer.0.attention.self.query.weight" in decayed
    assert "roberta.encoder.layer.0.attention.output.LayerNorm.weight" in skipped
    assert all(n.endswith("bias") or "LayerNorm" in n for n in skipped)
    assert not any(n.endswith("bias") or "LayerNorm" in n for n in decayed)
    assert "roberta.embeddings.word_embeddings.weight" not in decayed | skipped


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = optim.linear_schedule(warmup=4, total=12)
    assert [f(s) for s in (0, 2, 4, 8, 12, 20)] == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0]
    assert optim.linear_schedule(0, 10)(0) == 1.0


def test_better_direction():
    assert evaluate.better("dev/accuracy", 0.6, 0.5) and not evaluate.better(
        "dev/accuracy", 0.5, 0.6
    )
    assert evaluate.better("dev/loss", 0.5, 0.6) and not evaluate.better("dev/loss", 0.6, 0.5)
    assert evaluate.better("dev/accuracy", 0.1, None) and evaluate.better(
        "dev/accuracy", 0.1, math.nan
    )


# --- runs -------------------------------------------------------------------------------------------


def test_run_learns_the_toy_task_and_records_the_best_epoch(tmp_path):
    cfg = toytask.config(
        tmp_path, "method=full", "train.lr=2e-3", "train.max_steps=null", "train.epochs=6"
    )
    rec = train.run(cfg)
    assert rec["status"] == "success"
    folder = tmp_path / "smoke/tiny-roberta/toy/full/lr0.002_bs8_ep6_len64/s0"
    assert json.loads((folder / "result.json").read_text()) == json.loads(json.dumps(rec))
    rows = [json.loads(x) for x in (folder / "history.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["event"] == "eval"]
    losses = [r["loss"] for r in rows if r["event"] == "train"]
    assert len(evals) == 6 and [r["step"] for r in evals] == [12, 24, 36, 48, 60, 72]
    best = max(evals, key=lambda r: r["dev/accuracy"])
    assert rec["metrics"]["primary"] == best["dev/accuracy"] > 0.8  # it learned "contains 7"
    assert rec["metrics"]["best_step"] == best["step"]
    assert rec["metrics"]["final"] == {"dev/accuracy": evals[-1]["dev/accuracy"]}
    # the learning curve travels with the record (committed results rebuild curves without runs/)
    assert rec["metrics"]["curve"] == [{k: v for k, v in r.items() if k != "event"} for r in evals]
    assert sum(losses[-12:]) < 0.75 * sum(losses[:12])
    # adapter.safetensors holds the best evaluation's weights: re-scoring them gives the best metric
    assert not (folder / "checkpoint").exists()  # removed after success (keep_checkpoint=false)
    cost = rec["cost"]
    assert cost["trainable_params"] == cost["total_params"] > 1_000_000
    assert cost["adapter_bytes"] == (folder / "adapter.safetensors").stat().st_size
    assert rec["task"] == {
        "name": "toy",
        "version": "toy-1",
        "train_size": 96,
        "eval_sizes": {"dev": 40},
        "data_fingerprint": None,  # the toy task reads no files
    }
    for key in ("python", "torch", "transformers", "device", "dtype", "git_sha", "slurm_job_id"):
        assert key in rec["environment"]
    assert rec["environment"]["packages"]["transformers"] == rec["environment"]["transformers"]


def test_each_epoch_sees_every_example_once_in_a_new_order(tmp_path, monkeypatch):
    seen, built, original = [], {}, toytask.build

    def build(cfg, tokenizer):
        data = original(cfg, tokenizer)
        built["train"] = {id(ex): i for i, ex in enumerate(data.train)}

        def collate(batch):
            seen.extend(id(ex) for ex in batch)
            return toytask.collate(batch)

        data.collate = collate
        return data

    monkeypatch.setattr(toytask, "build", build)
    monkeypatch.setattr(toytask, "SIZES", {"train": 100, "dev": 8})  # 100 // 8: 12 steps, 4 dropped
    train.run(toytask.config(tmp_path, "train.max_steps=null", "train.epochs=2"))
    order = [built["train"][i] for i in seen if i in built["train"]]
    first, second = order[:96], order[96:]
    assert len(order) == 192 and len(set(first)) == 96 and len(set(second)) == 96
    assert first != second and set(first) != set(second)  # reshuffled, a different 4 dropped


def test_adapter_file_holds_the_best_weights(tmp_path):
    """Re-evaluating the saved adapter reproduces the best epoch's metric, not the last one's."""
    cfg = toytask.config(tmp_path, "train.lr=5e-3", "train.max_steps=null", "train.epochs=3")
    rec = train.run(cfg)
    folder = tmp_path / rec["run"]["id"]
    tensors = load_file(str(folder / "adapter.safetensors"))
    assert tensors and all(".lora." in n or n.startswith("classifier.") for n in tensors)
    meta = json.loads((folder / "adapter.json").read_text())  # weights/files.py's format
    assert meta["method"]["name"] == "lora" and meta["base"]["name"] == "tiny-roberta"
    assert meta["format_version"] == 1 and meta["num_labels"] == 2 and meta["task"] == "toy"
    assert meta["tensors"] == {n: list(t.shape) for n, t in tensors.items()}

    from lora_repro.build import build
    from lora_repro.distributed import Runtime
    from lora_repro.evaluate import evaluate
    from lora_repro.weights.state import load_adapter

    cfg2 = toytask.config(tmp_path / "again", "train.lr=5e-3", "train.max_steps=null")
    rt = Runtime.start("cpu", "fp32")
    b = build(cfg2, rt.device)
    load_adapter(b.model, folder, "roberta", base=cfg2.model)
    again = evaluate(b.model, b.data, rt, cfg2.train.eval_batch_size, b.forward)
    assert again["dev/accuracy"] == pytest.approx(rec["metrics"]["primary"], abs=1e-6)


def test_gradient_accumulation_matches_one_big_batch(tmp_path, monkeypatch):
    # SGD: its update is linear in the gradient, so a wrong micro-batch normalisation would show.
    monkeypatch.setattr(torch.optim, "AdamW", torch.optim.SGD)
    common = ("+model.arch.hidden_dropout_prob=0", "+model.arch.attention_probs_dropout_prob=0")
    common = (*common, "train.lr=0.5")
    a = train.run(toytask.config(tmp_path / "a", *common, "train.max_steps=6"))
    b = train.run(
        toytask.config(tmp_path / "b", *common, "train.max_steps=6", "train.grad_accum=4")
    )
    wa = load_file(str(tmp_path / "a" / a["run"]["id"] / "adapter.safetensors"))
    wb = load_file(str(tmp_path / "b" / b["run"]["id"] / "adapter.safetensors"))
    assert a["run"]["id"] == b["run"]["id"]  # accumulation is a memory knob, not an identity key
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-5), name


def test_regression_head_uses_mse(tmp_path):
    rec = train.run(toytask.config(tmp_path, "train.max_steps=4", task="toy_reg"))
    assert rec["status"] == "success" and rec["metrics"]["primary_metric"] == "dev/neg_mse"
    assert rec["metrics"]["primary"] < 0


def test_lm_head_on_tiny_gpt2_trains_on_completions(tmp_path):
    cfg = toytask.config(
        tmp_path, "model=tiny-gpt2", "method.dropout=0.1", "+task.label_smoothing=0.1",
        "train.lr=1e-2", "train.max_steps=null", "train.epochs=2", task="toy_lm",
    )  # fmt: skip
    rec = train.run(cfg)
    evals = record.History(tmp_path / rec["run"]["id"] / "history.jsonl").rows()
    losses = [r["dev/loss"] for r in evals if r["event"] == "eval"]
    assert rec["metrics"]["primary_metric"] == "dev/loss"
    assert rec["metrics"]["primary"] == min(losses) < losses[0]  # lower is better for a loss
    assert rec["cost"]["method_params"] == 2 * 2 * (32 * 8 + 8 * 32)  # q and v slices of c_attn


def test_init_from_loads_lora_and_skips_a_head_of_another_size(tmp_path):
    first = train.run(toytask.config(tmp_path / "a", "train.max_steps=2", task="toy"))
    adapter = tmp_path / "a" / first["run"]["id"] / "adapter.safetensors"
    saved = load_file(str(adapter))
    from lora_repro.build import build
    from lora_repro.models import head_params

    cpu = torch.device("cpu")

    # toy_reg has one output: the 2-class head is skipped, LoRA tensors are loaded
    s = build(toytask.config(tmp_path / "b", f"train.init_from={adapter}", task="toy_reg"), cpu)
    params = dict(s.model.named_parameters())
    lora = [n for n in saved if ".lora." in n]
    assert lora and all(torch.equal(params[n].detach().cpu(), saved[n]) for n in lora)
    assert params["classifier.out_proj.weight"].shape[0] == 1

    # The same label count: the LoRA tensors load, the head stays this run's fresh one (a head trained
    # for other labels means nothing here; §5.1 starts MRPC from MNLI with a new head).
    fresh = build(toytask.config(tmp_path / "e", task="toy"), cpu)
    head_names = set(head_params(fresh.model, "roberta"))
    fresh_head = {
        n: p.detach().clone() for n, p in fresh.model.named_parameters() if n in head_names
    }
    s = build(toytask.config(tmp_path / "b2", f"train.init_from={adapter.parent}", task="toy"), cpu)
    params = dict(s.model.named_parameters())
    assert all(torch.equal(params[n].detach().cpu(), saved[n]) for n in lora)
    heads = [n for n in saved if n.startswith("classifier.")]
    assert heads and all(torch.equal(params[n].detach(), fresh_head[n]) for n in heads)
    assert not torch.equal(
        params["classifier.out_proj.weight"].detach().cpu(), saved["classifier.out_proj.weight"]
    )

    cfg = toytask.config(tmp_path / "c", f"train.init_from={adapter}", "method.r=4")
    with pytest.raises(
        ConfigError,
        match=r"^train\.init_from: adapter .* does not fit: .*\.lora\.default\.A\.q has shape \(8, 32\), model needs \(4, 32\)",
    ):
        build(cfg, cpu)
    cfg = toytask.config(tmp_path / "f", f"train.init_from={adapter}", "method=bitfit")
    with pytest.raises(ConfigError, match=r"trained with method 'lora', this run uses 'bitfit'"):
        build(cfg, cpu)
    cfg = toytask.config(tmp_path / "d", f"train.init_from={tmp_path}/nope.safetensors")
    with pytest.raises(ConfigError, match=r"nope\.safetensors"):
        build(cfg, cpu)


def test_wandb_offline_logs_the_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    rec = train.run(toytask.config(tmp_path, "train.max_steps=2", "logging.wandb_mode=offline"))
    assert rec["status"] == "success"
    runs = list((tmp_path / "wb").glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_nlg_tasks_decode_after_training_with_the_best_weights(tmp_path, monkeypatch):
    """The NLG hook: nlg.generate.run_generation(model, tokenizer, task, out_dir, batch_size, metrics)
    gets the model holding the best evaluation's weights, and its scores join the best metrics."""
    from lora_repro.nlg import task as nlg_task

    # The toy LM task, with the NLG family's after-fit decode hook attached as nlg/task.py does.
    monkeypatch.setitem(__import__("lora_repro.data").data.BUILDERS, "nlg", "toytask")
    toy_build = toytask.build
    monkeypatch.setattr(toytask, "build", lambda c, t: nlg_task.with_decode(toy_build(c, t), c, t))
    seen = {}

    def run_generation(model, tokenizer, task, out_dir, batch_size, metrics):
        seen["weights"] = {
            n: p.detach().clone() for n, p in model.named_parameters() if ".lora." in n
        }
        seen["args"] = (task.name, task.kind, out_dir, batch_size, metrics)
        return {"BLEU": 0.5}

    monkeypatch.setattr(nlg_task, "run_generation", run_generation)
    cfg = toytask.config(
        tmp_path, "model=tiny-gpt2", "task.kind=nlg", "train.lr=1e-2", "train.max_steps=null",
        "train.epochs=2", "+task.generate_metrics=[BLEU]", task="toy_lm",
    )  # fmt: skip
    rec = train.run(cfg)
    folder = tmp_path / rec["run"]["id"]
    assert rec["metrics"]["best"]["test/BLEU"] == 0.5
    assert rec["metrics"]["selected_by"] == "dev/loss"
    assert seen["args"] == ("toy_lm", "nlg", folder, 64, ["BLEU"])
    best = load_file(str(folder / "adapter.safetensors"))
    assert seen["weights"] and all(
        torch.equal(seen["weights"][n].cpu(), best[n]) for n in seen["weights"]
    )
    rows = record.History(folder / "history.jsonl").rows()
    assert rows[-1]["event"] == "generate" and rows[-1]["test/BLEU"] == 0.5
    assert rows[-1]["best_step"] == rec["metrics"]["best_step"]


def test_bf16_autocast_trains_on_cpu_and_fp16_is_refused(tmp_path, monkeypatch):
    """train.precision=bf16 runs the forward in bf16 on CPU (AVX512-BF16/AMX kernels where present);
    weights and optimizer state stay fp32. fp16 on CPU is a clear error before anything is written."""
    from lora_repro.distributed import Runtime

    rt = Runtime.start("cpu", "bf16")
    with rt.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    rec = train.run(toytask.config(tmp_path, "train.max_steps=4", "train.precision=bf16"))
    assert rec["status"] == "success" and rec["environment"]["dtype"] == "bfloat16"
    assert math.isfinite(rec["metrics"]["primary"]) and "bf16" in rec["run"]["id"]
    folder = tmp_path / rec["run"]["id"]
    assert all(
        t.dtype == torch.float32 for t in load_file(str(folder / "adapter.safetensors")).values()
    )
    with pytest.raises(
        ConfigError, match=r"train.precision=fp16 needs a GPU.*valid on CPU: fp32, bf16"
    ):
        train.run(
            toytask.config(
                tmp_path / "fp16", "train.max_steps=4", "train.precision=fp16", "train.device=cpu"
            )
        )
    assert not (tmp_path / "fp16").exists()


def test_bf16_on_a_cpu_where_it_is_slower_warns_and_records_the_cpu(monkeypatch, caplog):
    """bf16 autocast pays on AMX, and without AMX only where a measured bf16 matmul beats fp32's
    (docs/runs.md: AVX512-BF16 was slower on a Xeon, 4.7x faster on an AMD EPYC): a slower CPU gets
    a warning naming it and the measured ratio, yet still runs bf16. Records name the CPU."""
    from lora_repro import distributed
    from lora_repro.distributed import Runtime, bf16_speedup, cpu_bf16

    assert cpu_bf16({"flags": "fpu avx512f avx512_bf16 amx_tile amx_bf16"}) == "amx"
    assert cpu_bf16({"flags": "fpu avx512f avx512_bf16"}) == "avx512_bf16"
    assert cpu_bf16({"flags": "fpu avx2"}) is None
    assert 0 < bf16_speedup() < float("inf")  # this machine's own measurement
    # (the CPU's kind, the measured speed-up) -> the warning's ratio, or None for no warning
    cases = {("amx", 0.5): None, ("avx512_bf16", 0.5): "2.0x", ("avx512_bf16", 4.7): None,
             (None, 0.25): "4.0x", ("native", 1.3): None}  # fmt: skip
    for (kind, speedup), ratio in cases.items():
        monkeypatch.setattr(distributed, "cpu_bf16", lambda info=None, k=kind: k)
        monkeypatch.setattr(distributed, "bf16_speedup", lambda s=speedup: s)
        caplog.clear()
        assert Runtime.start("cpu", "bf16").dtype == torch.bfloat16
        if ratio is None:
            assert "train.precision=bf16" not in caplog.text
        else:
            assert "train.precision=bf16 on this CPU (" in caplog.text
            assert f"a bf16 matmul takes {ratio} fp32's time here" in caplog.text
    assert re.fullmatch(
        r"cpu \(\d+ cores, .+, bf16: .+\)", record.environment("cpu", "fp32", 1)["device"]
    )


def test_log_txt_shows_progress_and_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    rec = train.run(toytask.config(tmp_path, "train.max_steps=4", "logging.log_every=2"))
    log_txt = (tmp_path / rec["run"]["id"] / "log.txt").read_text()
    assert re.search(
        r"step 2/4 \(epoch [0-9.]+\): loss [0-9.]+, lr [0-9.e+-]+, \d+ tokens/s, 0m\d\ds left",
        log_txt,
    )
    assert "step 4/4 " in log_txt

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "fit", interrupted)
    from lora_repro.cli import main

    code = main(["train", "experiment=smoke", "task.name=toy", f"runs_dir={tmp_path / 'k'}",
                 "task.train_limit=null", "task.eval_limit=null"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 130 and err[-1].startswith("interrupted; a training run resumes")
    assert "Traceback" not in "\n".join(err)
    assert not list((tmp_path / "k").rglob(".lock"))  # the lock went with it
