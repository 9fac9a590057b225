"""The hand-written LoRA update op (methods/lowrank.py) against autograd's own derivatives."""

from __future__ import annotations

import pytest
import torch

from lora_repro.methods.lowrank import add_update_


def _reference(y, x, slices, scales, a, b):
    """The update written with plain autograd ops, out of place."""
    out = y.clone()
    for (s, e), scale, ai, bi in zip(slices, scales, a, b, strict=True):
        out = out.index_add(-1, torch.arange(s, e), scale * (x @ ai.t()) @ bi.t())
    return out


def _case(fused: bool, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    d_in, d, r = 6, 5, 2
    slices = [(0, d), (2 * d, 3 * d)] if fused else [(0, d)]
    width = 3 * d if fused else d
    x = torch.randn(2, 3, d_in, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(d_in, width, generator=g, dtype=dtype, requires_grad=True)
    a = [torch.randn(r, d_in, generator=g, dtype=dtype, requires_grad=True) for _ in slices]
    b = [torch.randn(e - s, r, generator=g, dtype=dtype, requires_grad=True) for s, e in slices]
    scales = [0.5, 2.0][: len(slices)]
    return x, w, slices, scales, a, b


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("view", [False, True])
def test_gradcheck_against_finite_differences(fused, view):
    x, w, slices, scales, a, b = _case(fused)

    def f(x, w, *ab):
        y = x.reshape(-1, x.shape[-1]) @ w  # a fresh base output, as the base layer gives
        y = y.view(*x.shape[:-1], -1) if view else y
        n = len(slices)
        return add_update_(y, x, slices, scales, ab[:n], ab[n:])

    assert torch.autograd.gradcheck(f, (x, w, *a, *b))


@pytest.mark.parametrize("fused", [False, True])
def test_matches_plain_autograd_and_leaves_other_columns_untouched(fused):
    x, w, slices, scales, a, b = _case(fused, torch.float32, seed=1)
    base = x @ w
    ref = _reference(base, x, slices, scales, a, b)
    out = add_update_(x @ w, x, slices, scales, a, b)
    torch.testing.assert_close(out, ref)
    if fused:  # GPT-2's k slice: exactly the base output
        assert torch.equal(out[..., 5:10], base[..., 5:10])
    grad = torch.randn_like(out)
    tensors = [x, w, *a, *b]
    mine = torch.autograd.grad(out, tensors, grad)
    theirs = torch.autograd.grad(ref, tensors, grad)
    for m, t in zip(mine, theirs, strict=True):
        torch.testing.assert_close(m, t)


def test_frozen_input_and_no_grad_and_bf16_autocast():
    x, w, slices, scales, a, b = _case(True, torch.float32, seed=2)
    x, w = x.detach(), w.detach()  # the first adapted layer: only A and B need gradients
    out = add_update_(x @ w, x, slices, scales, a, b)
    out.sum().backward()
    assert x.grad is None and all(t.grad is not None for t in [*a, *b])
    with torch.inference_mode():
        torch.testing.assert_close(add_update_(x @ w, x, slices, scales, a, b), out.detach())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.linear(x, w.t())  # bf16 under autocast; x, A, B stay fp32
        low = add_update_(y, x, slices, scales, a, b)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), out.detach(), atol=0.1, rtol=0.05)
    low.float().sum().backward()
    assert all(t.grad.dtype == torch.float32 for t in [*a, *b])
