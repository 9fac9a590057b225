"""Losses shared by the training loop and the tests. Pure torch; imports nothing of ours."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # labels with this value (context and padding) contribute nothing to the loss


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Causal-LM loss on the completion tokens only (§5.4 / Table 11 of the paper).

    `logits` (batch, seq, vocab) at position t predict the token at t + 1, so logits are cut to
    [:, :-1] and labels to [:, 1:]. Positions whose label is -100 (the context and the padding) are
    ignored, and the loss is the mean over the remaining tokens of the whole batch (token-weighted,
    as the released code's `loss.sum() / mask.sum()`).

    Label smoothing ε mixes the one-hot target with the uniform distribution over the vocabulary:
    loss = (1 − ε) · (−log p_y) + ε · mean_c(−log p_c). That is both torch's definition and the
    released LoRA code's (`(1 - ε) * nll + ε * (-logprobs.mean(-1))`); Table 11 uses ε = 0.1 for E2E
    and WebNLG and 0 for DART.

    `reduction="sum"` returns the sum over the counted tokens instead: the trainer divides by the
    target-token count of the whole global batch, so accumulation and several processes give the same
    update as one big batch.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}; valid: mean, sum")
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree")
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    if reduction == "mean" and not (shift_labels != IGNORE_INDEX).any():
        # cross_entropy's mean over zero tokens is NaN; a batch with nothing to predict adds nothing.
        return shift_logits.sum() * 0.0
    return F.cross_entropy(
        shift_logits,
        shift_labels,
        ignore_index=IGNORE_INDEX,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )


def lm_window(labels: torch.Tensor) -> int:
    """How many trailing positions' logits the LM loss reads: from the one before the batch's first
    labelled token to the end. The context's positions predict nothing the loss counts, and their
    logits over a large vocabulary (SmolLM2: 49,152) cost a projection, a softmax and its backward
    each. `labels[:, -window:]` lines up with the kept logits; lm_loss's shift then drops the
    window's first label, which is never counted (it precedes the batch's first labelled token)."""
    counted = (labels[:, 1:] != IGNORE_INDEX).any(0)  # over the batch: position t + 1 is labelled
    first = int(counted.nonzero()[0]) if counted.any() else labels.shape[1] - 1
    return labels.shape[1] - first


def loss_sum(
    logits: torch.Tensor, labels: torch.Tensor, head: str, smoothing: float
) -> torch.Tensor:
    """Summed loss of a micro-batch: CE for classes, MSE for one regression output (STS-B), shifted
    CE for language modelling."""
    if head == "lm":
        return lm_loss(logits, labels, smoothing, reduction="sum")
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1).float(), labels.float(), reduction="sum")
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def n_targets(example: dict, head: str) -> int:
    """What the loss averages over: examples, or for LM the labelled tokens after the shift."""
    return sum(1 for t in example["labels"][1:] if t != IGNORE_INDEX) if head == "lm" else 1
