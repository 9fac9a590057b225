"""Singular spectra of ΔW = s · B A and how many directions it really uses (§7.2: "ΔW could have a
very low intrinsic rank").

ΔW is d × k but has rank ≤ r, so its SVD never needs a d × k decomposition: with B = Q_B R_B and
Aᵀ = Q_A R_A (thin QR), ΔW = Q_B (s R_B R_Aᵀ) Q_Aᵀ and the SVD of the r × r core gives everything.
Batched over layers, so a whole model is three LAPACK calls.

Pure math: imports nothing of ours.
"""

from __future__ import annotations

import torch


def delta_svd(
    B: torch.Tensor, A: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD of ΔW = scale · B A: U (..., d, r), S (..., r) descending, Vh (..., r, k)."""
    # QR in float32 (batched float64 QR is several times slower on CPU), the r × r core in float64.
    QB, RB = torch.linalg.qr(B.float())
    QA, RA = torch.linalg.qr(A.mT.float())
    Uc, S, Vhc = torch.linalg.svd(scale * RB.double() @ RA.double().mT)
    return QB.double() @ Uc, S, Vhc @ QA.double().mT


def energy(S: torch.Tensor) -> torch.Tensor:
    """Cumulative share of the squared Frobenius norm held by the top-n directions, n = 1..r."""
    e = S.square().cumsum(-1)
    return e / e[..., -1:].clamp_min(torch.finfo(e.dtype).tiny)


def energy_rank(S: torch.Tensor, frac: float) -> torch.Tensor:
    """The fewest directions holding at least `frac` of ‖ΔW‖_F² (0 for ΔW = 0)."""
    cum = energy(S)
    # a small tolerance so that "exactly 90%" counts as reached despite rounding
    n = (cum < frac - 1e-12).sum(-1) + 1
    return torch.where(S[..., 0] > 0, n, torch.zeros_like(n))


def entropy_rank(S: torch.Tensor) -> torch.Tensor:
    """Effective rank of Roy & Vetterli (2007): exp of the Shannon entropy of p = σ / Σσ.
    r equal singular values give r; one dominant direction gives ~1; ΔW = 0 gives 0."""
    total = S.sum(-1, keepdim=True)
    p = S / total.clamp_min(torch.finfo(S.dtype).tiny)
    h = -(p * torch.log(p.clamp_min(torch.finfo(S.dtype).tiny))).sum(-1)
    return torch.where(total[..., 0] > 0, h.exp(), torch.zeros_like(h))
