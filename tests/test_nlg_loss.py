"""lm_loss: shifted cross-entropy on the completion only, with the paper's label smoothing."""

from __future__ import annotations

import math

import torch

from lora_repro.losses import lm_loss


def manual_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float) -> float:
    """Written out token by token: position t predicts labels[t + 1]; -100 is skipped;
    loss = (1 − ε)·(−log p_y) + ε·mean_c(−log p_c), averaged over the counted tokens."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == -100:
                continue
            logp = torch.log_softmax(logits[b, t].double(), -1)
            total += (1 - eps) * -logp[y].item() + eps * -logp.mean().item()
            count += 1
    return total / count


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11)
    # row 0: 3 context tokens then 4 completion tokens; row 1: 2 context, 3 completion, 2 padding
    labels = torch.tensor([[-100, -100, -100, 4, 5, 6, 1], [-100, -100, 7, 8, 1, -100, -100]])
    return logits, labels


def test_matches_token_by_token_definition() -> None:
    logits, labels = batch()
    for eps in (0.0, 0.1):
        assert math.isclose(
            lm_loss(logits, labels, eps).item(), manual_loss(logits, labels, eps), rel_tol=1e-5
        )


def test_context_positions_do_not_count() -> None:
    """Changing what the model predicts at context positions, or the context tokens' labels while they
    stay ignored, leaves the loss unchanged; giving a context position a real label changes it."""
    logits, labels = batch()
    base = lm_loss(logits, labels, 0.1)
    poked = logits.clone()
    poked[0, 0:2] += 5 * torch.randn(2, 11)  # positions 0-1 predict context tokens 1-2 of row 0
    poked[1, 5:] -= 3.0  # padding
    assert torch.equal(lm_loss(poked, labels, 0.1), base)

    leaky = labels.clone()
    leaky[0, 2] = 3  # a context token made a target
    assert not math.isclose(lm_loss(logits, leaky, 0.1).item(), base.item(), rel_tol=1e-6)

    x = logits.clone().requires_grad_(True)
    lm_loss(x, labels, 0.1).backward()
    assert x.grad[0, :2].abs().max() == 0 and x.grad[1, 4:].abs().max() == 0
    assert (
        x.grad[0, 2].abs().max() > 0
    )  # the context's last token (EOS) predicts the first completion token


def test_nothing_to_predict_is_zero_not_nan() -> None:
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = lm_loss(logits, torch.full((1, 4), -100), 0.1)
    assert loss.item() == 0.0
    loss.backward()


def test_sum_reduction_is_the_token_sum() -> None:
    """The trainer sums micro-batch losses and divides by the global batch's target-token count."""
    logits, labels = batch()
    n = int((labels[:, 1:] != -100).sum())
    for eps in (0.0, 0.1):
        assert math.isclose(
            lm_loss(logits, labels, eps, reduction="sum").item(),
            n * manual_loss(logits, labels, eps),
            rel_tol=1e-5,
        )
    assert lm_loss(logits, torch.full((2, 7), -100), reduction="sum").item() == 0.0
