"""What one bench worker process measures on one model with random weights: training-step time of
every method (interleaved step by step, the order rotated each round, so ratios are measured side by
side under the same machine load), one method's peak memory and checkpoint bytes, and forward latency.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lora_repro.bench.variants import (
    build_variant,
    checkpoint_bytes,
    latency_variants,
    model_config,
    param_counts,
)
from lora_repro.models import ModelConfig, load_model

log = logging.getLogger(__name__)


def make_batch(
    cfg: ModelConfig, head: str, batch: int, seq_len: int, device: str, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random token ids (never the pad/eos id, so GPT-2's classifier reads the last position)."""
    g = torch.Generator().manual_seed(seed)
    vocab = cfg.arch["vocab_size"]
    ids = torch.randint(3, vocab - 2, (batch, seq_len), generator=g)
    labels = ids.clone() if head == "lm" else torch.randint(0, 2, (batch,), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    return {k: v.to(device) for k, v in out.items()}


def autocast(device: str, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, dtype=torch.bfloat16)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, opt: Any, batch: dict, ctx: Any) -> None:
    """Forward + backward + AdamW step + zero_grad(set_to_none): one training step."""
    with ctx:
        loss = model(**batch).loss
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def _optimizer(model: nn.Module) -> torch.optim.Optimizer | None:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=1e-5) if params else None


def setup(spec: dict) -> tuple[nn.Module, ModelConfig, str]:
    """Seeded base model on the spec's device, in train mode (dropout on, as in training)."""
    torch.set_num_threads(spec["threads"])
    cfg = model_config(spec["model"], spec.get("overrides", []))
    torch.manual_seed(spec.get("seed", 0))
    base = load_model(cfg, spec["head"], 2, device=spec["device"])
    return base.train(), cfg, cfg.family


def _rounds(names: list[str], n: int):
    """n rounds over the names, each round starting one name later (position effects cancel)."""
    for r in range(n):
        k = r % len(names)
        yield r, names[k:] + names[:k]


def time_training(spec: dict) -> dict[str, dict]:
    """Median training-step time of every method in spec["methods"], interleaved step by step."""
    base, cfg, family = setup(spec)
    device, ctx = spec["device"], autocast(spec["device"], spec["precision"])
    batch = make_batch(cfg, spec["head"], spec["batch"], spec["seq_len"], device)
    out: dict[str, dict] = {}
    live: dict[str, tuple[nn.Module, Any]] = {}
    for name in spec["methods"]:
        try:
            model = build_variant(base, name, family)
            live[name] = (model, _optimizer(model))
            out[name] = {"status": "ok", **param_counts(model), "step_s": [], "step_cpu_s": []}
        except Exception as exc:  # a failing method is a result, not a lost run
            log.exception("building %s failed", name)
            out[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    for r, order in _rounds(list(live), spec["warmup"] + spec["steps"]):
        for name in order:
            if name not in live:
                continue
            model, opt = live[name]
            try:
                _sync(device)
                t0, c0 = time.perf_counter(), time.process_time()
                train_step(model, opt, batch, ctx)
                _sync(device)
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            except Exception as exc:  # e.g. out of memory: record it, keep timing the others
                log.exception("step of %s failed", name)
                out[name].update(status="failed", error=f"{type(exc).__name__}: {exc}")
                del live[name]
                continue
            if r >= spec["warmup"]:
                out[name]["step_s"].append(wall)
                out[name]["step_cpu_s"].append(cpu)
    return out


def rss_bytes(field: str) -> int:
    """A /proc/self/status memory field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory(spec: dict) -> dict[str, Any]:
    """Peak memory of one method's training steps, in this (fresh) process, plus checkpoint bytes.

    CUDA: torch.cuda.max_memory_allocated over the steps (weights included), and the same above the
    allocation after model load. CPU: peak resident set size (VmHWM, reset through
    /proc/self/clear_refs after model load) minus the resident size at that point."""
    base, cfg, family = setup(spec)
    (name,) = spec["methods"]
    device, ctx = spec["device"], autocast(spec["device"], spec["precision"])
    model = build_variant(base, name, family)
    del base  # the variant holds every tensor it needs
    opt = _optimizer(model)
    batch = make_batch(cfg, spec["head"], spec["batch"], spec["seq_len"], device)
    if device == "cuda":
        torch.cuda.synchronize()
        baseline = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        # Reset the high-water mark (VmHWM) to the current resident size.
        Path("/proc/self/clear_refs").write_text("5")
        baseline = rss_bytes("VmRSS")
    for _ in range(spec["steps"]):
        train_step(model, opt, batch, ctx)
    if device == "cuda":
        torch.cuda.synchronize()
        peak_total = torch.cuda.max_memory_allocated()
        out = {"peak_mem_bytes": peak_total, "memory_kind": "cuda max_memory_allocated"}
    else:
        peak_total = rss_bytes("VmHWM")
        out = {"peak_mem_bytes": peak_total - baseline, "memory_kind": "cpu peak RSS above load"}
    out.update(
        baseline_bytes=baseline,
        peak_above_load_bytes=peak_total - baseline,
        checkpoint_bytes=checkpoint_bytes(model),
        **param_counts(model),
    )
    return out


def time_latency(spec: dict) -> dict[str, Any]:
    """Median forward time (ms) of each variant at each (batch, length) of the grid, interleaved."""
    base, cfg, family = setup(spec)
    device, ctx = spec["device"], autocast(spec["device"], spec["precision"])
    base.eval()
    variants = latency_variants(base, family, spec["methods"])
    for m in variants.values():
        m.eval()
    rows = []
    for b, length in spec["grid"]:
        batch = make_batch(cfg, spec["head"], b, length, device)
        batch.pop("labels")
        times: dict[str, list[float]] = {name: [] for name in variants}
        with torch.inference_mode(), ctx:
            for r, order in _rounds(list(variants), spec["warmup"] + spec["steps"]):
                for name in order:
                    _sync(device)
                    t0 = time.perf_counter()
                    variants[name](**batch)
                    _sync(device)
                    if r >= spec["warmup"]:
                        times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            rows.append({"batch": b, "seq_len": length, "variant": name, "ms": ts})
    return {"rows": rows}


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return math.nan if n == 0 else (s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2)
