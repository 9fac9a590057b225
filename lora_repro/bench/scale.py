"""Peak memory per process of DDP vs FSDP, with and without activation checkpointing, measured on CPU
with N gloo processes next to `lora-repro estimate`'s prediction for the same configuration.

    python -m lora_repro.bench.scale [--model roberta-base] [--method full] [--processes 2]
        [--batch 8] [--seq-len 128] [--steps 2] [--out results/bench/scale.md]

Each configuration is one `torchrun --standalone` launch of this module's worker, which builds the
model with random weights on the CPU, wraps it as the trainer does (lora_repro.parallel: FSDP keeps
this rank's shards), takes `--steps` AdamW steps on a random batch of the per-process size and
reports the peak resident memory (VmHWM, restarted after wrapping: the whole model was on the host
only before sharding, as on a GPU run's host) above the resident size after start-up (Python,
torch, the process group): the model's share, its gradients, optimizer state and activations. The
table prints the largest rank.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

COMBOS = [("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)]


def _setup(spec: dict[str, Any]) -> tuple[Any, Any, str]:
    """The model (random weights, the method applied) and its config, as the trainer builds it."""
    import yaml

    from lora_repro.methods import method_config, prepare
    from lora_repro.models import ModelConfig, load_model
    from lora_repro.paths import CONF_DIR

    values = yaml.safe_load((CONF_DIR / "model" / f"{spec['model']}.yaml").read_text())
    cfg = ModelConfig(**{**values, "init": "random"})
    device = "meta" if spec.get("meta") else "cpu"
    model = load_model(cfg, spec["head"], 3 if spec["head"] != "lm" else 0, device=device)
    prepare(model, method_config({"name": spec["method"]}), cfg.family)
    return model, cfg, cfg.family


def worker(spec: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    from lora_repro import parallel
    from lora_repro.bench.measure import rss_bytes
    from lora_repro.distributed import Runtime
    from lora_repro.hf_compat import enable_checkpointing

    torch.manual_seed(0)
    rt = Runtime.start("cpu", "fp32")
    baseline = rss_bytes("VmRSS")
    model, _, family = _setup(spec)
    if spec["checkpointing"]:
        enable_checkpointing(model)
    model.train()
    wrapped = parallel.wrap(model, spec["strategy"], rt, family)
    # The full model existed on this host before sharding (as it does on the CPU before a GPU run);
    # what a GPU would hold starts now: the high-water mark restarts from the resident size.
    Path("/proc/self/clear_refs").write_text("5")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    micro = spec["batch"] // rt.world
    ids = torch.randint(5, model.config.vocab_size, (micro, spec["seq_len"]))
    mask = torch.ones_like(ids)
    for _ in range(spec["steps"]):
        out = wrapped(input_ids=ids, attention_mask=mask).logits
        out.float().logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    peak = [rss_bytes("VmHWM") - baseline]
    if rt.world > 1:
        every: list[Any] = [None] * rt.world
        dist.all_gather_object(every, peak[0])
        peak = every
        dist.destroy_process_group()
    if rt.main:
        print("RESULT " + json.dumps({"peak_bytes": max(peak), "per_rank": peak}), flush=True)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    # glibc's malloc keeps freed blocks below its mmap threshold (up to 32 MiB, grown dynamically)
    # in its arenas, so the resident peak would count freed temporaries as live; a fixed 64 KiB
    # threshold returns every tensor's pages on free, and the peak tracks live bytes.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={spec['processes']}", "-m", "lora_repro.bench.scale",
           "--worker", json.dumps(spec)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    from lora_repro.atomic import write_atomic
    from lora_repro.estimate import MiB, estimate

    p = argparse.ArgumentParser(prog="python -m lora_repro.bench.scale", description=__doc__)
    p.add_argument("--model", default="roberta-base")
    p.add_argument("--method", default="full")
    p.add_argument("--head", default="classification")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="global: split over the processes")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default="results/bench/scale.md")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    base = {"model": args.model, "method": args.method, "head": args.head, "batch": args.batch,
            "seq_len": args.seq_len, "steps": args.steps, "processes": args.processes}  # fmt: skip
    meta, _, family = _setup({**base, "meta": True})
    rows, ddp = [], None
    for strategy, ckpt in COMBOS:
        spec = {**base, "strategy": strategy, "checkpointing": ckpt}
        got = measure(spec)["peak_bytes"]
        est = estimate(meta, family, batch=args.batch // args.processes, seq=args.seq_len,
                       world=args.processes, strategy=strategy, checkpointing=ckpt,
                       precision="fp32", base_dtype="fp32", head=args.head)["total"]  # fmt: skip
        ddp = ddp or got
        rows.append(f"| {strategy} | {'on' if ckpt else 'off'} | {got / MiB:,.0f} | "
                    f"{est / MiB:,.0f} | {est / got:.2f} | {got / ddp:.2f} |")  # fmt: skip
        print(rows[-1], flush=True)
    head = [f"# Peak memory per process: {args.model}, {args.method}, {args.processes} CPU "
            f"processes (gloo), global batch {args.batch} x {args.seq_len}, fp32",
            "", "`python -m lora_repro.bench.scale` (this file). Measured: the largest rank's peak "
            "resident memory above its start-up size; estimate: `lora-repro estimate`'s formula.",
            "", "| strategy | activation checkpointing | measured MiB | estimate MiB | "
            "estimate / measured | measured / DDP |", "|---|---|---:|---:|---:|---:|"]  # fmt: skip
    write_atomic(args.out, "\n".join(head + rows) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
