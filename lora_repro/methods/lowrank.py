"""The LoRA update as one autograd op: y[:, s:e] += scale · (x Aᵀ) Bᵀ for each adapted output slice,
in place, with a hand-written backward (§4.1's h = W0 x + (α/r) B A x, W0 x computed by the caller).

Why not plain autograd ops — profiling `lora-repro bench` (CPU, r = 8) showed three wastes:
- autograd forms ∂B in B's (d_out × r) layout as gᵀh, a GEMM shape MKL runs 10-40x slower at r < 16
  than hᵀg; here ∂B is (hᵀg)ᵀ;
- an in-place add into a slice of y (GPT-2's fused c_attn, q and v slices only, §4.2) makes autograd
  record CopySlices, whose backward clones the whole 3·d-wide gradient once per slice; here the slices'
  gradients are read as views of the incoming gradient and y's gradient passes through uncopied;
- a separate d-wide add and scale; here both ride on the GEMM (addmm_'s α, with β = 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class _SliceUpdate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, x, slices, scales, *weights):
        n = len(slices)
        dtype = y.dtype
        # Explicit dtypes: under autocast y is already in the low precision; so is the update.
        with torch.autocast(y.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)
            y2 = y.view(-1, y.shape[-1])
            mats = [w.to(dtype) for w in weights]
            hs = []
            for (start, end), a, b, scale in zip(slices, mats[:n], mats[n:], scales, strict=True):
                h = x2 @ a.t()
                y2[:, start:end].addmm_(h, b.t(), alpha=scale)
                hs.append(h)
        ctx.mark_dirty(y)
        ctx.save_for_backward(x2, *mats, *hs)
        ctx.slices, ctx.scales, ctx.x_shape, ctx.x_dtype = slices, scales, x.shape, x.dtype
        ctx.w_dtypes = [w.dtype for w in weights]
        return y

    @staticmethod
    def backward(ctx, grad):
        n = len(ctx.slices)
        x2, *rest = ctx.saved_tensors
        a_s, b_s, hs = rest[:n], rest[n : 2 * n], rest[2 * n :]
        need = ctx.needs_input_grad
        da, db, dx = [None] * n, [None] * n, None
        with torch.autocast(grad.device.type, enabled=False):
            g2 = grad.reshape(-1, grad.shape[-1])
            for i, ((start, end), a, b, h, scale) in enumerate(
                zip(ctx.slices, a_s, b_s, hs, ctx.scales, strict=True)
            ):
                gs = g2[:, start:end]  # a view: no copy of the slice's gradient
                if need[4 + n + i]:
                    db[i] = (h.t() @ gs).mul_(scale).t().to(ctx.w_dtypes[n + i])
                if need[4 + i] or need[1]:
                    dh = (gs @ b).mul_(scale)
                    if need[4 + i]:
                        da[i] = (dh.t() @ x2).to(ctx.w_dtypes[i])
                    if need[1]:
                        dx = dh @ a if dx is None else dx.addmm_(dh, a)
        if dx is not None:
            dx = dx.view(ctx.x_shape).to(ctx.x_dtype)
        return (grad if need[0] else None, dx, None, None, *da, *db)


def add_update_(
    y: torch.Tensor,
    x: torch.Tensor,
    slices: Sequence[tuple[int, int]],
    scales: Sequence[float],
    a: Sequence[torch.Tensor],
    b: Sequence[torch.Tensor],
) -> torch.Tensor:
    """Add scale_i · (x A_iᵀ) B_iᵀ to output columns slices[i] of `y` in place and return y (as a new
    tensor object when y had to be unwrapped). `y` must be a fresh output nobody saved for backward
    (a matmul's output is: it keeps its inputs, not its result); columns outside every slice (GPT-2's
    k) are left exactly untouched."""
    if not y.is_contiguous():
        y = y.contiguous()
    if y._is_view():
        base = y._base
        if base.is_contiguous() and base.numel() == y.numel() and base.data_ptr() == y.data_ptr():
            # GPT-2's Conv1D returns its matmul output through .view(); writing into a view would
            # make autograd copy the whole gradient again, so write into (and re-view) the base.
            return _SliceUpdate.apply(base, x, tuple(slices), tuple(scales), *a, *b).view(y.shape)
    return _SliceUpdate.apply(y, x, tuple(slices), tuple(scales), *a, *b)
