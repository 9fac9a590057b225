"""Scores for E2E (Table 3) and WebNLG / DART (Table 4), with the official scripts' semantics.

Inputs: one hypothesis string per input and, per input, the list of its references (multi-reference).

E2E, as e2e-metrics' `measure_scores.py -p` (what the released LoRA code runs):
- BLEU: sacrebleu, mteval-v13a tokenisation, case-insensitive, closest reference length for the brevity
  penalty, no smoothing (= pymteval's BLEUScore);
- NIST: `lora_repro.metrics.nist` (no package has the multi-reference definition), on lowercased v13a tokens;
- METEOR 1.5, ROUGE-L and CIDEr(-D): the MS-COCO caption code (pycocoevalcap) after its PTB tokenisation
  (lowercase, punctuation removed), exactly the COCOEvalCap steps e2e-metrics runs. These need `java`;
  without it they are left out with a warning.
WebNLG / DART, as the released LoRA code (gpt2_decode.py --tokenize --lower, then GenerationEval's eval.py):
- texts are lowercased and split on non-word characters (`re.split(r"(\\W)")`);
- BLEU: sacrebleu 13a (multi-bleu-detok.perl); METEOR: meteor-1.5.jar `-l en -norm` over all references;
- TER: for each input the lowest TER against any one reference, averaged over inputs (eval.py's
  `ter_score`, with the same pyter3 package; sacrebleu's tercom-style TER searches shifts differently
  and gives other numbers, see tests/test_nlg_metrics.py).
Scales: BLEU on 0-100 (as both tables print it); every other metric on its tool's native scale (METEOR,
ROUGE-L, TER in [0, 1]; NIST and CIDEr unbounded). Table 3 prints METEOR and ROUGE-L ×100.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Sequence

from lora_repro.metrics.nist import corpus_nist, tokenize_13a

log = logging.getLogger(__name__)

E2E_METRICS = ("BLEU", "NIST", "METEOR", "ROUGE_L", "CIDEr")
TRIPLE_METRICS = ("BLEU", "METEOR", "TER")
JAVA_METRICS = ("METEOR", "ROUGE_L", "CIDEr")


def java_available() -> bool:
    return shutil.which("java") is not None


def _check(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference groups")
    if not hyps:
        raise ValueError("nothing to score")
    if any(not group for group in refs):
        raise ValueError("every hypothesis needs at least one reference")


def corpus_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], lowercase: bool) -> float:
    """Multi-reference corpus BLEU on 0-100 (sacrebleu, 13a tokens, no smoothing)."""
    from sacrebleu.metrics import BLEU

    width = max(len(g) for g in refs)
    streams = [[g[i] if i < len(g) else None for g in refs] for i in range(width)]
    bleu = BLEU(tokenize="13a", lowercase=lowercase, smooth_method="none", force=True)
    return bleu.corpus_score(list(hyps), streams).score


def nist(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """E2E NIST (case-insensitive, v13a tokens)."""
    return corpus_nist(
        [tokenize_13a(h.lower()) for h in hyps],
        [[tokenize_13a(r.lower()) for r in group] for group in refs],
    )


def ptb_tokenize(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """COCOEvalCap's first step: Stanford PTB tokenisation, lowercased, punctuation dropped."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r} for r in group] for i, group in enumerate(refs)})
    res = tok.tokenize({i: [{"caption": h}] for i, h in enumerate(hyps)})
    return gts, res


_METEOR = None  # one java process per Python process: loading METEOR's paraphrase table takes ~20 s


def meteor(gts: dict, res: dict) -> float:
    """Corpus METEOR 1.5 (`-l en -norm`, statistics aggregated over all segments)."""
    global _METEOR
    if _METEOR is None:
        from pycocoevalcap.meteor.meteor import Meteor

        _METEOR = Meteor()
    return float(_METEOR.compute_score(gts, res)[0])


def coco_scores(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], names: Sequence[str] = JAVA_METRICS
) -> dict[str, float]:
    """METEOR, ROUGE-L and CIDEr as e2e-metrics computes them (needs java)."""
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts, res = ptb_tokenize(hyps, refs)
    scorers = {
        "METEOR": lambda: meteor(gts, res),
        "ROUGE_L": lambda: Rouge().compute_score(gts, res)[0],
        "CIDEr": lambda: Cider().compute_score(gts, res)[0],
    }
    return {name: float(scorers[name]()) for name in names}


def _select(metrics: Sequence[str], valid: Sequence[str]) -> list[str]:
    unknown = sorted(set(metrics) - set(valid))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; valid: {', '.join(valid)}")
    wanted = [m for m in valid if m in metrics]
    if not java_available() and set(wanted) & set(JAVA_METRICS):
        left = [m for m in wanted if m in JAVA_METRICS]
        log.warning("java not found: %s left out (install a Java runtime)", ", ".join(left))
        wanted = [m for m in wanted if m not in JAVA_METRICS]
    return wanted


def score_e2e(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Sequence[str] = E2E_METRICS
) -> dict[str, float]:
    """BLEU, NIST, METEOR, ROUGE_L, CIDEr (the last three only when java is installed)."""
    _check(hyps, refs)
    wanted = _select(metrics, E2E_METRICS)
    out = {}
    if "BLEU" in wanted:
        out["BLEU"] = corpus_bleu(hyps, refs, lowercase=True)
    if "NIST" in wanted:
        out["NIST"] = nist(hyps, refs)
    coco = [m for m in wanted if m in JAVA_METRICS]
    if coco:
        out.update(coco_scores(hyps, refs, coco))
    return {m: out[m] for m in wanted}


def normalize_webnlg(text: str) -> str:
    """gpt2_decode.py --lower --tokenize: lowercase, then split around every non-word character."""
    return " ".join(" ".join(re.split(r"(\W)", text.lower())).split())


def sentence_ter(hyp: str, refs: Sequence[str]) -> float:
    """The lowest TER of `hyp` against any single reference, with pyter3 as GenerationEval's eval.py
    (its pinned dependency) computes it; an empty reference or a pyter failure counts 1, as there."""
    import pyter

    def one(ref: str) -> float:
        if not ref.strip():
            return 1.0
        try:
            return float(pyter.ter(hyp.split(), ref.split()))
        except Exception:  # eval.py: `except Exception: ter_score = 1`
            return 1.0

    return min(one(r) for r in refs)


def score_triples(
    hyps: Sequence[str], refs: Sequence[Sequence[str]], metrics: Sequence[str] = TRIPLE_METRICS
) -> dict[str, float]:
    """WebNLG / DART: BLEU, METEOR (needs java), TER on lowercased, split texts."""
    _check(hyps, refs)
    wanted = _select(metrics, TRIPLE_METRICS)
    hyps = [normalize_webnlg(h) for h in hyps]
    refs = [[normalize_webnlg(r) for r in group] for group in refs]
    out = {}
    if "BLEU" in wanted:
        out["BLEU"] = corpus_bleu(hyps, refs, lowercase=False)
    if "METEOR" in wanted:
        out["METEOR"] = meteor(
            {i: list(g) for i, g in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
        )
    if "TER" in wanted:
        out["TER"] = sum(sentence_ter(h, g) for h, g in zip(hyps, refs, strict=True)) / len(hyps)
    return out


def score_task(
    task: str,
    hyps: Sequence[str],
    refs: Sequence[Sequence[str]],
    seen: Sequence[bool | None] | None = None,
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """The task's metrics. WebNLG adds `<metric>_seen` / `<metric>_unseen` (Table 4's S and U columns)
    when the inputs' categories are known; the plain names are over all inputs (A)."""
    if task == "e2e":
        return score_e2e(hyps, refs, metrics or E2E_METRICS)
    if task not in ("webnlg", "dart"):
        raise ValueError(f"unknown NLG task {task!r}; valid: e2e, webnlg, dart")
    metrics = metrics or TRIPLE_METRICS
    out = score_triples(hyps, refs, metrics)
    if task == "webnlg" and seen is not None and all(s is not None for s in seen):
        for name, want in (("seen", True), ("unseen", False)):
            idx = [i for i, s in enumerate(seen) if s is want]
            if idx:
                part = score_triples([hyps[i] for i in idx], [refs[i] for i in idx], metrics)
                out.update({f"{k}_{name}": v for k, v in part.items()})
    return out
