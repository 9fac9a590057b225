"""How often each method's test hypotheses drop or repeat a slot of the meaning representation
(issue #19): a check on what BLEU summarises, from the committed predictions alone.

    python experiments/e2e_smollm2/slots.py [--data ../shared/data/e2e/test.txt]

For each results/e2e_smollm2/<method>_s<seed>/test.hyp.txt (one line per test MR, in the order of
the MRs' first appearance in test.txt), counts the slot values that should appear as written (name,
near, food, area, Type): missing = not in the hypothesis (case-insensitive), repeated = more than
once. Verbatim matching undercounts paraphrases ("Italian food" for "Italian" still counts as
present; "near the river" for "riverside" counts as missing) the same way for every method.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from lora_repro.data.nlg_sources import read_e2e  # noqa: E402

VERBATIM = ("name", "near", "food", "area", "Type")


def mrs(path: Path) -> list[str]:
    """The test set's MRs in order of first appearance (how the study decodes them:
    data.nlg.generation_set)."""
    return list(dict.fromkeys(p.context for p in read_e2e(path)))


def slot_values(mr: str) -> list[str]:
    pairs = (kv.split(" : ", 1) for kv in mr.split(" | ") if " : " in kv)
    return [v.strip().lower() for k, v in pairs if k.strip() in VERBATIM]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "e2e" / "test.txt"))
    p.add_argument("--results", default=str(ROOT / "results" / "e2e_smollm2"))
    args = p.parse_args()
    contexts = mrs(Path(args.data))
    print("| run | slot values | missing | repeated | mean words |\n|---|---:|---:|---:|---:|")
    for hyp in sorted(Path(args.results).glob("*/test.hyp.txt")):
        hyps = hyp.read_text().splitlines()
        if len(hyps) != len(contexts):
            raise SystemExit(f"{hyp}: {len(hyps)} lines, but {args.data} has {len(contexts)} MRs")
        counts = [
            h.lower().count(v) for c, h in zip(contexts, hyps, strict=True) for v in slot_values(c)
        ]
        words = sum(len(h.split()) for h in hyps) / len(hyps)
        print(f"| {hyp.parent.name} | {len(counts)} | {sum(n == 0 for n in counts) / len(counts):.1%} | "
              f"{sum(n > 1 for n in counts) / len(counts):.1%} | {words:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
