"""NIST (Doddington 2002) with the E2E challenge's semantics, and mteval-v13a tokenisation.

No maintained package computes multi-reference NIST the way the official E2E scorer does (e2e-metrics'
`pymteval.py`, which the released LoRA code runs with `measure_scores.py -p`); nltk's `corpus_nist`
scores each hypothesis against its single best reference instead. Definition used here:

- information weight of an n-gram, from all references of the corpus:
  info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)), count() of the empty prefix = total ref words;
- per hypothesis and order n, matches are clipped by the largest count in any one of its references;
- score = BP · Σ_{n=1..5} Σ(info · matches) / (number of hypothesis n-grams of order n),
  BP = exp(−β · ln²(min(1, sys_len / ref_len))), β = −ln 0.5 / ln² 1.5 (mteval-v13a), sys_len = total
  hypothesis words, ref_len = Σ over inputs of the *mean* length of that input's references.
Case-insensitive (e2e-metrics' NISTScore default). One difference from pymteval: an n-gram order longer
than a hypothesis contributes 0 n-grams, not a negative count (as mteval-v13a.pl counts them).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

BETA = -math.log(0.5) / math.log(1.5) ** 2

# mteval-v13a's tokenizer (also sacrebleu's "13a" and e2e-metrics' pymteval.tokenize).
_V13A = (
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),  # punctuation, symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),  # period and comma unless preceded by a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),  # ... unless followed by a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),  # dash after a digit
)


def tokenize_13a(text: str) -> list[str]:
    """mteval-v13a tokens of one segment."""
    text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    for ent, char in (("&quot;", '"'), ("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">")):
        text = text.replace(ent, char)
    text = f" {text} "
    for pattern, repl in _V13A:
        text = pattern.sub(repl, text)
    return text.split()


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_nist(
    hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[Sequence[str]]], max_n: int = 5
) -> float:
    """Corpus NIST of tokenised hypotheses against their tokenised reference groups (lowercase first
    for the E2E setting)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups")
    ref_counts: Counter = Counter()  # every n-gram (n = 0..max_n) over all references of the corpus
    hit_counts: list[Counter] = [
        Counter() for _ in range(max_n)
    ]  # order n -> n-gram -> clipped hits
    sys_ngrams = [0] * max_n
    ref_len = 0.0
    for hyp, group in zip(hyps, refs, strict=True):
        if not group:
            raise ValueError("every hypothesis needs at least one reference")
        for ref in group:
            ref_counts[()] += len(ref)
            for n in range(1, max_n + 1):
                ref_counts.update(_ngrams(ref, n))
        ref_len += sum(len(r) for r in group) / len(group)
        for n in range(1, max_n + 1):
            hyp_ng = _ngrams(hyp, n)
            sys_ngrams[n - 1] += sum(hyp_ng.values())
            best: Counter = Counter()
            for ref in group:
                best |= _ngrams(ref, n)  # | keeps the max count per n-gram
            hit_counts[n - 1].update(hyp_ng & best)  # & keeps the min: clipped matches

    def info(ngram: tuple[str, ...]) -> float:
        return math.log2(ref_counts[ngram[:-1]] / ref_counts[ngram])

    total = 0.0
    for n in range(max_n):
        if sys_ngrams[n]:
            total += sum(info(g) * c for g, c in hit_counts[n].items()) / sys_ngrams[n]
    sys_len = sum(len(h) for h in hyps)
    ratio = sys_len / ref_len if ref_len else 0.0
    if ratio >= 1:
        penalty = 1.0
    elif ratio <= 0:
        penalty = 0.0
    else:
        penalty = math.exp(-BETA * math.log(ratio) ** 2)
    return penalty * total
