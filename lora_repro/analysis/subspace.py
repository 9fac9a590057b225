"""Normalised subspace similarity between two learned LoRA factors (§7.2, eq. 4):

    φ(A1, A2, i, j) = ‖U1_iᵀ U2_j‖_F² / min(i, j) ∈ [0, 1]

with U the right-singular vectors of A (r × k), ordered by singular value, and U_i the top i of them.
For B (d × r) the left-singular vectors play the same role. Everything is batched over leading
dimensions (layers), so a 24-layer model is one SVD call per factor.

Pure math: imports nothing of ours.
"""

from __future__ import annotations

import torch

FACTORS = ("A", "B")


def singular_basis(M: torch.Tensor, factor: str = "A") -> torch.Tensor:
    """(..., n, r) orthonormal columns spanning the factor's r-dimensional side, in singular-value
    order: the right-singular vectors of A (..., r, k) or the left-singular vectors of B (..., d, r).

    Via a thin QR of the tall matrix T (Aᵀ or B) and the SVD of its r × r factor R: T = Q R =
    (Q Ur) S Vrᵀ. Batched QR of a tall-skinny matrix is ~10x cheaper than its SVD; the r × r SVD
    runs in float64 so φ's diagonal stays at 1 to ~1e-6."""
    if factor not in FACTORS:
        raise ValueError(f"unknown factor {factor!r}; valid: A, B")
    T = M.mT if factor == "A" else M
    Q, R = torch.linalg.qr(T.float())
    Ur = torch.linalg.svd(R.double()).U
    return Q.double() @ Ur


def phi_from_bases(U1: torch.Tensor, U2: torch.Tensor) -> torch.Tensor:
    """φ for every (i, j) at once: (..., r1, r2), entry [i-1, j-1] = φ(i, j).

    ‖U1_iᵀ U2_j‖_F² is the sum of squared entries of the top-left i × j block of U1ᵀ U2, so a 2-D
    cumulative sum gives all blocks in one pass."""
    overlap = (U1.mT @ U2).square()
    block = overlap.cumsum(-2).cumsum(-1)
    i = torch.arange(1, U1.shape[-1] + 1, dtype=block.dtype, device=block.device)
    j = torch.arange(1, U2.shape[-1] + 1, dtype=block.dtype, device=block.device)
    return block / torch.minimum(i[:, None], j[None, :])


def phi(M1: torch.Tensor, M2: torch.Tensor, factor: str = "A") -> torch.Tensor:
    """φ(M1, M2, i, j) for all i ≤ r1, j ≤ r2, batched over leading dimensions."""
    return phi_from_bases(singular_basis(M1, factor), singular_basis(M2, factor))


def random_phi(
    shape1: tuple[int, ...], shape2: tuple[int, ...], factor: str = "A", seed: int = 0
) -> torch.Tensor:
    """φ between two random Gaussian matrices of the given shapes (the baseline of Fig. 4):
    independent random subspaces overlap by about max(i, j) / n."""
    g = torch.Generator().manual_seed(seed)
    M1 = torch.randn(shape1, generator=g)
    M2 = torch.randn(shape2, generator=g)
    return phi(M1, M2, factor)
