"""The optimizer state a checkpoint stores by parameter name (parallel.optimizer_state) restores into a
fresh optimizer so that the next step is the step the original would have taken, on CPU and on CUDA,
for each AdamW kernel the trainer can pick."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lora_repro import parallel

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _model(device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).to(device)


def _step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1)).to(next(model.parameters()))
    model(x).square().mean().backward()
    opt.step()
    opt.zero_grad()


@pytest.mark.parametrize("kernel", ["fused", "foreach", "capturable"])
@pytest.mark.parametrize("device", DEVICES)
def test_a_restored_optimizer_takes_the_same_next_step(device, kernel):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    if kernel == "capturable" and device == "cpu":
        pytest.skip("capturable AdamW is a CUDA option")
    options = {kernel: True}
    original = _model(device)
    opt = torch.optim.AdamW(original.parameters(), lr=1e-2, **options)
    _step(original, opt)
    # through bytes, as checkpoint.save writes it: no tensor stays shared with `opt`
    buffer = io.BytesIO()
    torch.save(parallel.optimizer_state(original, opt), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    resumed = _model(device)
    resumed.load_state_dict(original.state_dict())
    opt2 = torch.optim.AdamW(resumed.parameters(), lr=1e-2, **options)
    parallel.load_optimizer_state(resumed, opt2, saved)
    # torch's own loader places `step` by the kernel's rule (on the parameter's device for fused and
    # capturable, the CPU otherwise): ours must agree, or the kernel refuses the tensors
    reference = torch.optim.AdamW(_model(device).parameters(), lr=1e-2, **options)
    reference.load_state_dict(opt.state_dict())
    params = zip(opt2.param_groups[0]["params"], reference.param_groups[0]["params"], strict=True)
    for p, q in params:
        ours, theirs = opt2.state[p]["step"], reference.state[q]["step"]
        assert (ours.device, ours.dtype) == (theirs.device, theirs.dtype)

    _step(original, opt)
    _step(resumed, opt2)
    for a, b in zip(original.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
