"""lm_loss: shifted cross-entropy on the completion only, with the paper's label smoothing."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_model

from lora_repro.build import Built
from lora_repro.losses import lm_loss, lm_window
from lora_repro.methods import method_config, prepare


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


def test_window_keeps_every_position_the_loss_reads() -> None:
    """lm_window: logits from the one before the batch's first labelled token give the same loss."""
    logits, labels = batch()
    keep = lm_window(labels)
    assert keep == 6  # row 1's first label is at position 2: logits from position 1 on
    for eps in (0.0, 0.1):
        full = lm_loss(logits, labels, eps, reduction="sum")
        assert torch.equal(
            lm_loss(logits[:, -keep:], labels[:, -keep:], eps, reduction="sum"), full
        )
    assert lm_window(torch.full((2, 5), -100)) == 1  # nothing to predict: one position, loss 0


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["lora", "prefix_layer"])
def test_trimmed_logits_give_the_full_loss_and_gradients(family: str, method: str) -> None:
    """Built.forward asks the causal LM for the window's logits only (transformers' logits_to_keep):
    the loss and every trainable gradient equal those of the whole sequence's logits."""
    model = tiny_model(f"tiny-{family}", head="lm")
    prepare(model, method_config({"name": method, "init": "normal", "init_std": 0.5}
                                 if method == "prefix_layer" else {"name": method}), family)  # fmt: skip
    ids = torch.randint(5, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, :5] = -100  # 5 context tokens
    labels[1, :3] = -100  # 3 context tokens, then 2 of padding
    labels[1, 7:] = -100
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # right padding, as training batches are
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def loss_and_grads(trim: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        built = Built(None, None, model, {}, use_types=False, trim_logits=trim)  # type: ignore[arg-type]
        logits, target = built.forward(model, batch)
        assert logits.shape[1] == (7 if trim else 9)  # row 1's first label is position 3
        loss = lm_loss(logits, target, 0.1, reduction="sum")
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    full, trimmed = loss_and_grads(False), loss_and_grads(True)
    torch.testing.assert_close(trimmed[0], full[0])
    for a, b in zip(trimmed[1], full[1], strict=True):
        torch.testing.assert_close(a, b)
