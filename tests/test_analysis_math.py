"""The §7 math on synthetic matrices with known answers: φ (eq. 4), ΔW spectra and effective rank,
and Table 7's projections and amplification factor against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lora_repro.analysis.amplification import (
    projection_norm,
    random_directions,
    table7,
    top_directions,
)
from lora_repro.analysis.spectrum import delta_svd, energy_rank, entropy_rank
from lora_repro.analysis.subspace import phi, random_phi, singular_basis


def orthonormal(n: int, m: int, seed: int) -> torch.Tensor:
    """n × m with orthonormal columns (float64)."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, m, generator=g, dtype=torch.float64)).Q


def factor_with_rows(V: torch.Tensor, s: torch.Tensor, seed: int) -> torch.Tensor:
    """A = X diag(s) Vᵀ (r × k) with a random orthogonal X: right-singular vectors V, values s."""
    X = orthonormal(len(s), len(s), seed)
    return X @ torch.diag(s) @ V.T


# ---- φ -------------------------------------------------------------------------------------------


def test_phi_of_a_matrix_with_itself_is_one_on_the_diagonal():
    A = torch.randn(3, 8, 100, generator=torch.Generator().manual_seed(0))
    p = phi(A, A)
    assert p.shape == (3, 8, 8)
    assert torch.allclose(
        torch.diagonal(p, dim1=-2, dim2=-1), torch.ones(3, 8, dtype=p.dtype), atol=1e-5
    )
    # off the diagonal the top-min(i,j) directions are shared too, so φ(i, j) = 1 everywhere
    assert torch.allclose(p, torch.ones_like(p), atol=1e-5)


def test_orthogonal_row_spaces_give_zero():
    Q = orthonormal(64, 16, 1)
    s = torch.linspace(3, 1, 8, dtype=torch.float64)
    A1 = factor_with_rows(Q[:, :8], s, 2)
    A2 = factor_with_rows(Q[:, 8:], s, 3)
    assert phi(A1, A2).abs().max() < 1e-6


@pytest.mark.parametrize(("r1", "r2", "k"), [(8, 16, 3), (6, 6, 4), (16, 8, 5)])
def test_planted_shared_subspace_gives_the_known_phi(r1, r2, k):
    """Both A share their top-k right-singular directions (same order), the rest are mutually
    orthogonal: φ(i, j) = min(i, j, k) / min(i, j), i.e. 1 for i, j ≤ k and k / min(i, j) beyond."""
    n = 200
    Q = orthonormal(n, r1 + r2 - k, 4)
    shared, own1, own2 = Q[:, :k], Q[:, k:r1], Q[:, r1:]
    s1 = torch.linspace(5, 1, r1, dtype=torch.float64)  # distinct and decreasing: a fixed order
    s2 = torch.linspace(9, 2, r2, dtype=torch.float64)
    A1 = factor_with_rows(torch.cat([shared, own1], 1), s1, 5)
    A2 = factor_with_rows(torch.cat([shared, own2], 1), s2, 6)
    i = np.arange(1, r1 + 1)[:, None]
    j = np.arange(1, r2 + 1)[None, :]
    expected = np.minimum(np.minimum(i, j), k) / np.minimum(i, j)
    np.testing.assert_allclose(phi(A1, A2).numpy(), expected, atol=1e-5)


def test_phi_is_in_unit_interval_and_symmetric_when_runs_swap():
    g = torch.Generator().manual_seed(7)
    A1, A2 = torch.randn(4, 8, 50, generator=g), torch.randn(4, 12, 50, generator=g)
    p12, p21 = phi(A1, A2), phi(A2, A1)
    assert p12.min() >= -1e-12 and p12.max() <= 1 + 1e-6
    assert torch.allclose(p12, p21.mT, atol=1e-6)


def test_phi_matches_a_direct_numpy_computation():
    g = torch.Generator().manual_seed(8)
    A1, A2 = torch.randn(5, 40, generator=g), torch.randn(7, 40, generator=g)
    U1 = np.linalg.svd(A1.double().numpy())[2].T  # right-singular vectors as columns
    U2 = np.linalg.svd(A2.double().numpy())[2].T
    p = phi(A1, A2).numpy()
    for i in range(1, 6):
        for j in range(1, 8):
            ref = np.linalg.norm(U1[:, :i].T @ U2[:, :j]) ** 2 / min(i, j)
            assert p[i - 1, j - 1] == pytest.approx(ref, abs=1e-5)


def test_factor_b_uses_left_singular_vectors():
    g = torch.Generator().manual_seed(9)
    A1, A2 = torch.randn(2, 6, 30, generator=g), torch.randn(2, 4, 30, generator=g)
    assert torch.allclose(phi(A1.mT, A2.mT, "B"), phi(A1, A2, "A"), atol=1e-6)
    U = singular_basis(A1, "A")
    assert torch.allclose(U.mT @ U, torch.eye(6, dtype=U.dtype).expand(2, 6, 6), atol=1e-5)


def test_random_baseline_is_about_max_i_j_over_n():
    """Independent random subspaces of R^n: E φ(i, j) = max(i, j) / n."""
    p = random_phi((200, 8, 256), (200, 16, 256), seed=0).mean(0).numpy()
    i = np.arange(1, 9)[:, None]
    j = np.arange(1, 17)[None, :]
    np.testing.assert_allclose(p, np.maximum(i, j) / 256, rtol=0.15, atol=2e-3)


# ---- spectrum ------------------------------------------------------------------------------------


def test_delta_svd_equals_the_svd_of_the_product():
    g = torch.Generator().manual_seed(10)
    B, A = torch.randn(3, 40, 6, generator=g), torch.randn(3, 6, 30, generator=g)
    U, S, Vh = delta_svd(B, A, scale=0.5)
    dW = 0.5 * (B.double() @ A.double())
    assert torch.allclose(U @ torch.diag_embed(S) @ Vh, dW, atol=1e-5)
    ref = np.linalg.svd(dW.numpy(), compute_uv=False)[:, :6]
    np.testing.assert_allclose(S.numpy(), ref, rtol=1e-5)


def test_effective_ranks_of_a_known_spectrum():
    """ΔW built with singular values (3, 2, 1, 0): energy 9, 13, 14 of 14, so 2 directions hold
    90% and 3 hold 99%; the entropy rank of σ = (2, 1, 1) is exp(H(½, ¼, ¼)) = 2^1.5."""
    U, V = orthonormal(20, 4, 11), orthonormal(16, 4, 12)
    s = torch.tensor([3.0, 2.0, 1.0, 0.0], dtype=torch.float64)
    _, S, _ = delta_svd(U * s, V.T)  # B = U diag(s), A = Vᵀ
    np.testing.assert_allclose(S.numpy(), s.numpy(), atol=1e-6)
    assert energy_rank(S, 0.9).item() == 2
    assert energy_rank(S, 0.99).item() == 3
    assert energy_rank(S, 0.5).item() == 1
    assert entropy_rank(torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(2**1.5)
    assert entropy_rank(torch.tensor([1.0, 1.0, 1.0, 1.0])).item() == pytest.approx(4.0)
    assert entropy_rank(torch.tensor([5.0, 0.0, 0.0])).item() == pytest.approx(1.0)


def test_zero_update_has_rank_zero():
    S = delta_svd(torch.zeros(10, 3), torch.randn(3, 8))[1]
    assert energy_rank(S, 0.9).item() == 0
    assert entropy_rank(S).item() == 0.0


# ---- amplification (Table 7) ---------------------------------------------------------------------


def planted_w(d: int = 48, k: int = 40, seed: int = 13):
    P, Q = orthonormal(d, k, seed), orthonormal(k, k, seed + 1)
    sigma = torch.linspace(10, 1, k, dtype=torch.float64)
    return P, sigma, Q, P @ torch.diag(sigma) @ Q.T


def test_amplification_closed_form_on_w_directions():
    """ΔW = τ₁ p₃ q₃ᵀ + τ₂ p₇ q₇ᵀ: ‖Uᵀ W Vᵀ‖ = √(σ₃² + σ₇²), amplification = ‖τ‖ / that."""
    P, sigma, Q, W = planted_w()
    tau = torch.tensor([4.0, 2.5], dtype=torch.float64)
    B = P[:, [3, 7]] * tau  # d × 2
    A = Q[:, [3, 7]].T  # 2 × k
    dU, dS, dVh = delta_svd(B[None], A[None])
    cols = table7(W[None], dU, dS, dVh)
    proj = torch.sqrt(sigma[3] ** 2 + sigma[7] ** 2)
    assert cols["proj_dW_dirs"].item() == pytest.approx(proj.item(), rel=1e-6)
    assert cols["norm_dW"].item() == pytest.approx(tau.norm().item(), rel=1e-6)
    assert cols["amplification"].item() == pytest.approx((tau.norm() / proj).item(), rel=1e-6)
    assert cols["norm_W"].item() == pytest.approx(sigma.norm().item(), rel=1e-6)
    # W's own top-2 directions capture √(σ₁² + σ₂²)
    top2 = torch.sqrt(sigma[0] ** 2 + sigma[1] ** 2).item()
    assert cols["proj_W_dirs"].item() == pytest.approx(top2, rel=1e-5)


def test_amplification_closed_form_on_mixed_directions():
    """u = (p₁ + p₂)/√2, v = (q₁ − q₂)/√2: uᵀ W v = (σ₁ − σ₂)/2."""
    P, sigma, Q, W = planted_w()
    u = (P[:, 0] + P[:, 1]) / 2**0.5
    v = (Q[:, 0] - Q[:, 1]) / 2**0.5
    tau = 3.0
    dU, dS, dVh = delta_svd((tau * u)[None, :, None], v[None, None, :])
    cols = table7(W[None], dU, dS, dVh)
    proj = abs(sigma[0] - sigma[1]).item() / 2
    assert cols["proj_dW_dirs"].item() == pytest.approx(proj, rel=1e-6)
    assert cols["amplification"].item() == pytest.approx(tau / proj, rel=1e-6)


@pytest.mark.parametrize("exact", [True, False])
def test_top_directions_capture_the_top_singular_energy(exact):
    """Randomized subspace iteration (the default for large W) agrees with the exact SVD."""
    d, k, r = 300, 260, 8
    P, Q = orthonormal(d, k, 20), orthonormal(k, k, 21)
    sigma = 0.97 ** torch.arange(k, dtype=torch.float64)  # slowly decaying, like attention weights
    W = (P @ torch.diag(sigma) @ Q.T).float()
    U, S, Vh = top_directions(W[None], r, exact=exact)
    want = sigma[:r].norm().item()
    assert projection_norm(W[None].double(), U.double(), Vh.double()).item() == pytest.approx(
        want, rel=1e-4
    )
    np.testing.assert_allclose(S[0].numpy(), sigma[:r].numpy(), rtol=1e-3)


def test_random_directions_are_orthonormal_and_project_little():
    U, Vh = random_directions((50,), 64, 48, 4, seed=0)
    assert torch.allclose(U.mT @ U, torch.eye(4).expand(50, 4, 4), atol=1e-5)
    assert torch.allclose(Vh @ Vh.mT, torch.eye(4).expand(50, 4, 4), atol=1e-5)
    W = torch.randn(64, 48, generator=torch.Generator().manual_seed(1))
    # E ‖Uᵀ W Vᵀ‖² = r² ‖W‖² / (d k) for uniformly random U, V
    mean_sq = projection_norm(W.expand(50, 64, 48), U, Vh).square().mean().item()
    expected = 16 * W.square().sum().item() / (64 * 48)
    assert mean_sq == pytest.approx(expected, rel=0.25)
