"""Batched beam search with the paper's decoding settings (Table 11), and the `generate` command.

Why not `model.generate(num_beams=...)`: transformers' beam search differs from the decoder that
produced the paper's numbers (the released LoRA code's `gpt2_beam.py`) in ways that change outputs:
its no-repeat-n-gram rule also counts n-grams of the *prompt* (so copying a 4-token entity name from the
input is banned after a mention), it applies the ban after the softmax (no renormalisation), and it
refills the beam with non-EOS continuations and stops on a heuristic. This module follows the
released decoder, step for step:

- at step t each of the k live hypotheses is extended by every token; the ban of no-repeat-n-gram
  (n-grams of the *generated* tokens only) sets logits to -inf *before* the log-softmax; the k best
  (sum of log-probs) continuations over all live hypotheses are kept;
- a kept continuation that ends in EOS is finished: its score is
      sum of log-probs / length ** length_penalty,   length = number of generated tokens, EOS included
  (`_add_beam_candidate`: `beam_scores / cur_len ** length_penalty`, cur_len = history length), it is
  compared with the best finished hypothesis so far, and it leaves the beam (its slot is dead);
- after `max_new_tokens` steps the still-live hypotheses are candidates too, with length = max_new_tokens.
The output is the single best candidate. transformers 5.23 normalises by the same length (generated
tokens including EOS, `cur_len + 1 - decoder_prompt_len`), so the length penalty itself agrees.

We stop early only when it cannot change the answer: log-probs are ≤ 0, so a live hypothesis with sum s
can reach at most s / L_max**lp (lp > 0; L_max = max_new_tokens) or s / (t + 1)**lp (lp ≤ 0); once the
best finished score is ≥ that bound for every live hypothesis of an input, the input is done.
tests/test_nlg_generate.py checks this against exhaustive search.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lora_repro.hf_compat import cache_kwarg, cache_out

log = logging.getLogger(__name__)


@dataclass
class BeamSettings:
    beam_size: int = 10
    length_penalty: float = 0.9
    no_repeat_ngram_size: int = 4
    max_new_tokens: int = 64
    eos_ids: tuple[int, ...] = ()

    @classmethod
    def from_task(cls, task: Any, eos_ids: tuple[int, ...]) -> BeamSettings:
        return cls(
            task.beam_size,
            task.length_penalty,
            task.no_repeat_ngram_size,
            task.max_new_tokens,
            eos_ids,
        )


def ban_repeated_ngrams(logits: torch.Tensor, history: torch.Tensor, n: int) -> None:
    """In place: -inf on every token that would complete an n-gram already present in `history`
    (rows: hypotheses; columns: generated tokens so far), as fairseq / the released code do."""
    rows, t = history.shape
    if n <= 0 or t < n:
        return
    vocab = logits.shape[-1]
    if n == 1:
        idx = history
    else:
        prefix = history[:, t - n + 1 :]  # the last n-1 tokens
        windows = history.unfold(1, n - 1, 1)[
            :, : t - n + 1
        ]  # earlier (n-1)-grams with a successor
        match = (windows == prefix[:, None, :]).all(-1)
        idx = history[:, n - 1 :].masked_fill(~match, vocab)  # the successor, or a dummy column
    banned = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device)
    banned.scatter_(1, idx, True)
    logits.masked_fill_(banned[:, :vocab], float("-inf"))


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prompts: list[list[int]],
    settings: BeamSettings,
    pad_id: int = 0,
    early_stop: bool = True,
) -> list[list[int]]:
    """Best completion (token ids, EOS and after removed) for each prompt; prompts are left-padded and
    decoded together (explicit position ids keep left padding from shifting positions). The model must
    be in eval mode (dropout off). `early_stop=False` always runs max_new_tokens steps (for tests)."""
    k, lp, steps = settings.beam_size, settings.length_penalty, settings.max_new_tokens
    device = next(model.parameters()).device
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    ids, mask = ids.repeat_interleave(k, 0).to(device), mask.repeat_interleave(k, 0).to(device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits, next_pos = cache_out(out), out.logits[:, -1, :], pos[:, -1:] + 1
    cache_name = cache_kwarg(model)

    eos = torch.tensor(settings.eos_ids, dtype=torch.long, device=device)
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all k rows hold the same prompt: expand only one at the first step
    history = torch.zeros((batch * k, 0), dtype=torch.long, device=device)
    best_score = [float("-inf")] * batch
    best_seq: list[list[int]] = [[] for _ in range(batch)]
    offsets = (torch.arange(batch, device=device) * k)[:, None]

    for t in range(steps):
        logits = logits.float()
        ban_repeated_ngrams(logits, history, settings.no_repeat_ngram_size)
        logp = torch.nan_to_num(F.log_softmax(logits, -1), nan=float("-inf"))  # all-banned rows
        vocab = logp.shape[-1]
        cand = (scores.view(-1, 1) + logp).view(batch, k * vocab)
        scores, top = cand.topk(k, dim=1)
        src = (offsets + torch.div(top, vocab, rounding_mode="floor")).view(-1)
        tok = (top % vocab).view(-1, 1)
        history = torch.cat([history[src], tok], dim=1)
        past.reorder_cache(src)

        finished = torch.isin(tok.view(batch, k), eos) & torch.isfinite(scores)
        length = t + 1
        for b, j in finished.nonzero().tolist():
            s = scores[b, j].item() / length**lp
            if (
                s > best_score[b]
            ):  # strict: an equal later candidate does not replace (released code)
                best_score[b], best_seq[b] = s, history[b * k + j].tolist()
        scores = scores.masked_fill(finished, float("-inf"))

        bound_len = steps if lp > 0 else length + 1
        live_best = scores.max(dim=1).values / bound_len**lp
        if early_stop and all(best_score[b] >= live_best[b].item() for b in range(batch)):
            break
        if t + 1 == steps:
            continue  # no forward pass for a step that will not be taken
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        out = model(
            input_ids=tok,
            attention_mask=mask,
            position_ids=next_pos,
            use_cache=True,
            **{cache_name: past},
        )
        past, logits, next_pos = cache_out(out), out.logits[:, -1, :], next_pos + 1
    else:  # ran the full max_new_tokens: the live hypotheses are candidates (unfinished outputs)
        for b in range(batch):
            for j in range(k):
                if math.isfinite(scores[b, j].item()):
                    s = scores[b, j].item() / steps**lp
                    if s > best_score[b]:
                        best_score[b], best_seq[b] = s, history[b * k + j].tolist()

    eos_set = set(settings.eos_ids)
    results = []
    for seq in best_seq:
        cut = next((i for i, x in enumerate(seq) if x in eos_set), len(seq))
        results.append(seq[:cut])
    return results


def generate_texts(
    model: nn.Module,
    tokenizer: Any,
    inputs: list[dict[str, Any]],
    settings: BeamSettings,
    batch_size: int = 8,
) -> list[str]:
    """Decode every input (dicts with `input_ids`) in batches; returns the stripped texts."""
    from lora_repro.data.nlg import pad_token_id

    was_training = model.training
    model.eval()
    texts: list[str] = []
    try:
        for start in range(0, len(inputs), batch_size):
            chunk = [ex["input_ids"] for ex in inputs[start : start + batch_size]]
            for ids in beam_search(model, chunk, settings, pad_token_id(tokenizer)):
                # gpt2_decode.py also cuts at the first blank line ("\n\n", GPT-2's token 628)
                text = tokenizer.decode(ids, skip_special_tokens=True)
                texts.append(text.split("\n\n")[0].strip())
            log.info("decoded %d / %d", len(texts), len(inputs))
    finally:
        model.train(was_training)
    return texts


def run_generation(
    model: nn.Module,
    tokenizer: Any,
    task: Any,
    out_dir: str | Path,
    batch_size: int = 8,
    metrics: list[str] | None = None,
    subdir: str = "generate",
) -> dict[str, float]:
    """Decode `task.generate_split`, write predictions and scores under `out_dir/<subdir>/` (training
    writes the run's own decode to `generate/`), return the scores (`metrics`: a subset of the
    task's, default all). Files: `<split>.jsonl` (context, prediction, references), `<split>.hyp.txt` and
    `<split>.ref.txt` (e2e-metrics layout: one reference per line, a blank line between inputs, so the
    official scripts can re-score them) and `<split>.scores.json`."""
    from lora_repro.atomic import write_atomic
    from lora_repro.data.nlg import generation_set, stop_ids
    from lora_repro.metrics.nlg import score_task

    split = task.generate_split
    inputs = generation_set(task, tokenizer, split)
    settings = BeamSettings.from_task(
        task, stop_ids(tokenizer, getattr(task, "stop_strings", None))
    )
    hyps = generate_texts(model, tokenizer, inputs, settings, batch_size)
    refs = [ex["references"] for ex in inputs]
    scores = score_task(task.name, hyps, refs, [ex.get("seen") for ex in inputs], metrics)
    out = Path(out_dir) / subdir
    keep = ("context", "references", "category", "seen")
    rows = [
        {**{k: ex[k] for k in keep if k in ex}, "prediction": h}
        for ex, h in zip(inputs, hyps, strict=True)
    ]
    write_atomic(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_atomic(out / f"{split}.hyp.txt", "".join(h + "\n" for h in hyps))
    write_atomic(out / f"{split}.ref.txt", "\n".join("".join(r + "\n" for r in rs) for rs in refs))
    write_atomic(
        out / f"{split}.scores.json", json.dumps({"split": split, **scores}, indent=2) + "\n"
    )
    return scores
