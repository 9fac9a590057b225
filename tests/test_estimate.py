"""`lora-repro estimate`: the memory formula's parts on the meta device (no allocation), and the CLI.
The formula's agreement with measured peaks is the benchmark's job (lora_repro.bench.scale)."""

from __future__ import annotations

import json

from lora_repro.cli import main
from lora_repro.estimate import activations, estimate, processes
from lora_repro.methods import method_config, prepare
from lora_repro.models import ModelConfig, load_model


def roberta_base(method: str):
    import yaml

    from lora_repro.paths import CONF_DIR

    values = yaml.safe_load((CONF_DIR / "model" / "roberta-base.yaml").read_text())
    cfg = ModelConfig(**values)
    model = load_model(cfg, "classification", 3, device="meta")
    prepare(model, method_config({"name": method}), cfg.family)
    return model


def test_full_fine_tuning_parts_and_what_sharding_and_checkpointing_change():
    model = roberta_base("full")
    n = sum(p.numel() for p in model.parameters())
    kw = dict(batch=4, seq=128, precision="fp32", base_dtype="fp32", head="classification")
    one = estimate(model, "roberta", world=1, strategy="ddp", checkpointing=False, **kw)
    assert (one["weights"], one["gradients"], one["optimizer"]) == (4 * n, 4 * n, 8 * n)
    ddp = estimate(model, "roberta", world=2, strategy="ddp", checkpointing=False, **kw)
    assert ddp["gradients"] == 8 * n  # plus DDP's bucket copies
    fsdp = estimate(model, "roberta", world=2, strategy="fsdp", checkpointing=False, **kw)
    assert fsdp["optimizer"] == 4 * n and fsdp["gradients"] == 2 * n
    assert 2 * n < fsdp["weights"] < 3 * n  # the shard plus two gathered blocks
    ckpt = estimate(model, "roberta", world=2, strategy="fsdp", checkpointing=True, **kw)
    assert ckpt["activations"] < fsdp["activations"] / 5 and ckpt["total"] <= fsdp["total"]
    # Korthikanti et al.'s 34·s·b·h + 5·a·s²·b per block with 2-byte activations and 1-byte masks
    s, b, h, a, layers = 128, 4, 768, 12, 12
    per_block = 34 * s * b * h + 5 * a * s * s * b
    assert (
        activations(model.config, b, s, 2, "classification", False)
        == layers * per_block + s * b * h * 2
    )


def test_lora_trains_little_so_activations_and_weights_dominate():
    model = roberta_base("lora")
    kw = dict(batch=32, seq=512, world=1, strategy="ddp", checkpointing=False, precision="bf16",
              base_dtype="bf16", head="classification")  # fmt: skip
    est = estimate(model, "roberta", **kw)
    assert est["optimizer"] < 0.05 * est["weights"] and est["total"] > est["activations"]


def test_processes_follow_the_slurm_cluster_keys():
    assert processes({"name": "local"}) == 1
    assert processes({"name": "slurm", "gpus": 8, "tasks_per_node": None, "nodes": 2}) == 16
    assert processes({"name": "slurm", "gpus": 4, "tasks_per_node": 1, "nodes": 1}) == 1


def test_cli_prints_every_strategy(capsys):
    code = main(["estimate", "recipe=roberta-base/mnli", "method_recipe=roberta-base/lora",
                 "cluster=slurm", "cluster.gpus=8"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["processes"] == 8 and out["micro_batch"] == 16  # 128 / 8
    rows = {(r["strategy"], r["activation_checkpointing"]) for r in out["per_process"]}
    assert rows == {("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)}
