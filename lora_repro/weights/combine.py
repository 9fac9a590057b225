"""Combine LoRA adapters by their weight updates: ΔW = Σ_i w_i · s_i · B_i A_i per adapted matrix.

Exact at rank Σ r_i (A stacks the A_i, B the scaled B_i); or truncated to rank k by SVD, which is the
best rank-k approximation in Frobenius norm (Eckart-Young), with the error reported. The SVD runs on a
small (Σr × Σr) core: with B = Q_b R_b and Aᵀ = Q_a R_a, ΔW = Q_b (R_b R_aᵀ) Q_aᵀ.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from lora_repro.errors import ConfigError
from lora_repro.methods.lora import Config as LoRAConfig


def _scale(cfg: LoRAConfig, letter: str) -> float:
    r = cfg.ranks.get(letter, cfg.r)
    return cfg.alpha / (math.sqrt(r) if cfg.rslora else r)


def _updates(tensors: dict[str, torch.Tensor], cfg: LoRAConfig) -> dict[tuple[str, str], tuple]:
    """(module path, letter) -> (A, B, scale) of one adapter's tensors."""
    out: dict[tuple[str, str], list] = {}
    tag = f".lora.{cfg.adapter_name}."
    for key, value in tensors.items():
        if tag not in key:
            continue
        path, _, rest = key.partition(tag)
        which, _, letter = rest.partition(".")
        out.setdefault((path, letter), [None, None, _scale(cfg, letter)])[which == "B"] = value
    return {k: tuple(v) for k, v in out.items()}


def combine(
    adapters: list[tuple[dict[str, torch.Tensor], LoRAConfig]],
    weights: list[float],
    rank: int | None = None,
    name: str = "default",
) -> tuple[dict[str, torch.Tensor], LoRAConfig, dict]:
    """Weighted sum of LoRA updates. Returns (LoRA tensors named for adapter `name`, its config, a
    report with per-matrix and overall relative Frobenius truncation error)."""
    if len(adapters) != len(weights) or not adapters:
        raise ConfigError(
            f"combine needs one weight per adapter; got {len(weights)} for {len(adapters)}"
        )
    first = adapters[0][1]
    for _, cfg in adapters:
        if cfg.name != "lora":
            raise ConfigError(f"only LoRA adapters combine; got {cfg.name!r}")
        if (cfg.targets, cfg.layers) != (first.targets, first.layers):
            raise ConfigError(
                "adapters to combine must adapt the same matrices: "
                f"targets/layers {first.targets}/{first.layers} vs {cfg.targets}/{cfg.layers}"
            )
    if rank is not None and rank < 1:
        raise ConfigError(f"combine rank must be >= 1, got {rank}")
    parts = [_updates(t, c) for t, c in adapters]
    keys = sorted(parts[0])
    if any(sorted(p) != keys for p in parts):
        raise ConfigError("adapters to combine hold different LoRA matrices")
    combined: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
    errors, total_sq, lost_sq, ranks = {}, 0.0, 0.0, {}
    for path, letter in keys:
        a = torch.cat([p[(path, letter)][0].double() for p in parts], 0)
        b = torch.cat(
            [
                w * p[(path, letter)][2] * p[(path, letter)][1].double()
                for p, w in zip(parts, weights, strict=True)
            ],
            1,
        )
        k = a.shape[0] if rank is None else min(rank, a.shape[0])
        if k < a.shape[0]:
            qb, rb = torch.linalg.qr(b)
            qa, ra = torch.linalg.qr(a.t())
            u, s, vh = torch.linalg.svd(rb @ ra.t())
            b, a = (qb @ u[:, :k]) * s[:k], vh[:k] @ qa.t()
            err_sq, norm_sq = float((s[k:] ** 2).sum()), float((s**2).sum())
        else:
            err_sq, norm_sq = 0.0, float(torch.linalg.matrix_norm(b @ a) ** 2)
        total_sq += norm_sq
        lost_sq += err_sq
        errors[f"{path}.{letter}"] = math.sqrt(err_sq / norm_sq) if norm_sq else 0.0
        ranks.setdefault(letter, k)
        if ranks[letter] != k:
            raise ConfigError(
                f"rank of {letter!r} differs across layers; pass a rank to truncate to"
            )
        combined[(path, letter)] = (a, b)
    values = list(ranks.values())
    r = max(set(values), key=values.count)
    cfg = replace(
        first,
        r=r,
        alpha=float(r),
        rslora=False,
        ranks={x: k for x, k in ranks.items() if k != r},
        adapter_name=name,
    )
    dtype = next(iter(adapters[0][0].values())).dtype
    out: dict[str, torch.Tensor] = {}
    for (path, letter), (a, b) in combined.items():
        # B carries all the weighting and scaling: divide by the new adapter's own α/r.
        b = b / _scale(cfg, letter)
        out[f"{path}.lora.{name}.A.{letter}"] = a.to(dtype).contiguous()
        out[f"{path}.lora.{name}.B.{letter}"] = b.to(dtype).contiguous()
    report = {
        "rank": ranks,
        "weights": list(weights),
        "relative_error": math.sqrt(lost_sq / total_sq) if total_sq else 0.0,
        "relative_error_per_matrix": errors,
    }
    return out, cfg, report
