"""`lora-repro estimate [train overrides]`: the expected peak memory of one training process of a
config, before anything is allocated: weights, gradients of the trainable part, AdamW's two moments,
and the activations kept for the backward pass at the config's micro-batch and task.max_length, for
DDP and FSDP with and without activation checkpointing. The processes come from `cluster=slurm`
(`cluster.nodes` x `cluster.tasks_per_node`, default one per GPU), else 1.

Activations follow Korthikanti et al. (2022, "Reducing Activation Recomputation in Large Transformer
Models", §4.1) with the element size as a parameter: per block and per token, 5e+1 bytes x d for
attention (its input, Q, K, V, the output projection's input, a dropout mask) plus (2e+1) x heads x
seq for the attention probabilities and their dropout, (e+1) x d + 2e x d_ffn for the MLP, 2e x d for
the LayerNorms (e = 4 bytes in fp32, 2 under bf16/fp16 autocast). Checkpointing keeps each block's
input and recomputes one block at a time. An LM head adds the fp32 logits, their softmax and their
gradient (3 x seq x vocab x 4 bytes per sequence). The optimizer step's temporaries (AdamW's
foreach kernels: one fp32 copy of what it updates) come after the activations are freed, so the
peak is weights + gradients + moments + the larger of the two. `python -m lora_repro.bench.scale`
measures the same configurations on CPU next to these numbers.
"""

from __future__ import annotations

import json
from typing import Any

from torch import nn

MiB = 2**20


def _arch(config: Any) -> tuple[int, int, int, int, int]:
    d = config.hidden_size
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * d
    return config.num_hidden_layers, d, config.num_attention_heads, ffn, config.vocab_size


def activations(config: Any, batch: int, seq: int, elem: int, head: str, ckpt: bool) -> int:
    """Bytes of activations kept for backward in one process (module docstring)."""
    layers, d, heads, ffn, vocab = _arch(config)
    tokens = batch * seq
    attn = tokens * d * (5 * elem + 1) + batch * heads * seq * seq * (2 * elem + 1)
    block = attn + tokens * d * (elem + 1) + 2 * elem * tokens * ffn + 2 * elem * tokens * d
    kept = layers * tokens * d * elem + block if ckpt else layers * block
    logits = 3 * tokens * vocab * 4 if head == "lm" else 0
    return kept + tokens * d * elem + logits  # + the embeddings' output


def estimate(model: nn.Module, family: str, *, batch: int, seq: int, world: int, strategy: str,
             checkpointing: bool, precision: str, base_dtype: str, head: str) -> dict[str, int]:  # fmt: skip
    """Peak bytes per process by part, and their total. `model` may live on the meta device."""
    from lora_repro.models import blocks

    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    wbytes = 2 if base_dtype == "bf16" else 4
    shard = world if strategy == "fsdp" else 1
    weights = (frozen * wbytes + trained * 4) // shard
    if strategy == "fsdp" and world > 1:  # the block being computed and the next one, gathered
        biggest = max(sum(p.numel() for p in b.parameters()) for b in blocks(model, family))
        weights += 2 * biggest * wbytes
    elem = 2 if precision in ("bf16", "fp16") else 4
    out = {
        "weights": weights,
        # DDP all-reduces through bucket copies of the gradients (gradient_as_bucket_view=False)
        "gradients": trained * 4 // shard * (2 if strategy == "ddp" and world > 1 else 1),
        "optimizer": 2 * trained * 4 // shard,  # AdamW's exp_avg and exp_avg_sq, fp32
        "activations": activations(model.config, batch, seq, elem, head, checkpointing),
        # AdamW's foreach step allocates one fp32 temporary the size of what it updates; the
        # activations are gone by then, so the peak is the larger of the two
        "optimizer_step": trained * 4 // shard,
    }
    fixed = out["weights"] + out["gradients"] + out["optimizer"]
    return {**out, "total": fixed + max(out["activations"], out["optimizer_step"])}


def tasks_per_node(tasks: int | None, gpus: int | None) -> int:
    """conf/cluster/slurm.yaml's rule (its launcher resolves through this): `cluster.tasks_per_node`
    when set, else one per GPU, else 1."""
    return int(tasks if tasks is not None else gpus or 1)


def processes(cluster: dict[str, Any]) -> int:
    if cluster.get("name") != "slurm":
        return 1
    tasks = tasks_per_node(cluster.get("tasks_per_node"), cluster.get("gpus"))
    return int(cluster.get("nodes") or 1) * tasks


def main(argv: list[str]) -> int:
    """Print the estimate as JSON: the config's own strategy first, then the other combinations."""
    from lora_repro.compose import values
    from lora_repro.config import RunConfig
    from lora_repro.methods import prepare
    from lora_repro.models import load_model

    raw = values(argv)
    cfg = RunConfig.from_dict(raw)
    world = processes(raw.get("cluster") or {})
    t = cfg.train
    micro = max(1, t.batch_size // (world * t.grad_accum))
    head = "lm" if cfg.task.kind == "nlg" else "classification"
    model = load_model(cfg.model, head, 0 if head == "lm" else 3, device="meta")
    prepare(model, cfg.method, cfg.model.family)
    rows = []
    combos = [(t.strategy, t.activation_checkpointing)]
    combos += [(s, c) for s in ("ddp", "fsdp") for c in (False, True) if (s, c) != combos[0]]
    for strategy, ckpt in combos:
        est = estimate(model, cfg.model.family, batch=micro, seq=cfg.task.max_length,
                       world=world, strategy=strategy, checkpointing=ckpt,
                       precision=t.precision, base_dtype=cfg.model.dtype, head=head)  # fmt: skip
        rows.append({"strategy": strategy, "activation_checkpointing": ckpt,
                     **{f"{k}_mib": round(v / MiB) for k, v in est.items()}})  # fmt: skip
    print(json.dumps({"model": cfg.model.name, "method": cfg.method.name, "processes": world,
                      "micro_batch": micro, "seq_len": cfg.task.max_length,
                      "per_process": rows}, indent=2))  # fmt: skip
    return 0
