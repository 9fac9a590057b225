#!/usr/bin/env bash
# Rebuild the SmolLM2 E2E study's committed artifacts (issue #19) from its runs: results/e2e_smollm2.jsonl
# and the blocks between <!-- e2e:NAME --> markers of experiments/e2e_smollm2/README.md (our test
# scores, mean over seeds, next to the paper's GPT-2 M rows). Trains nothing; run it from the
# repository root with the venv active.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d runs/e2e_smollm2 ] && [ -z "${NO_COLLECT:-}" ]; then lora-repro collect e2e_smollm2; fi

python - <<'PY'
import csv, json, re, statistics
from pathlib import Path

p = Path("results/e2e_smollm2.jsonl")
recs = [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
ok = [r for r in recs if r["status"] == "success"]
METRICS = [("BLEU", 1, 1), ("NIST", 1, 2), ("METEOR", 100, 1), ("ROUGE_L", 100, 1), ("CIDEr", 1, 2)]
groups = {}
for r in ok:
    # precision too: FT ran fp32 on a CPU where bf16 was slower (docs/runs.md), the others bf16
    key = (r["config"]["method"]["name"], r["run"]["id"].split("/")[3], r["config"]["train"]["precision"])
    groups.setdefault(key, []).append(r)
lines = ["| model | method | params | precision | seeds | CPU-h | " + " | ".join(m for m, _, _ in METRICS) + " |",
         "|---|---|---:|---|---:|---:|" + "---:|" * len(METRICS)]
for (method, tag, precision), rs in sorted(groups.items()):
    cells = []
    for name, scale, digits in METRICS:
        vals = [scale * r["metrics"]["best"][f"test/{name}"] for r in rs if f"test/{name}" in r["metrics"]["best"]]
        sd = f" ±{statistics.stdev(vals):.{digits}f}" if len(vals) > 1 else ""
        cells.append(f"{statistics.fmean(vals):.{digits}f}{sd}" if vals else "–")
    n = rs[0]["cost"]["method_params"] / 1e6
    cpu_h = sum(r["cost"].get("cpu_time_s") or 0 for r in rs) / 3600
    lines.append(f"| SmolLM2-135M (ours, CPU) | {tag} | {n:.2f}M | {precision} | {len(rs)} | {cpu_h:.2f} | "
                 + " | ".join(cells) + " |")
for row in csv.DictReader(open("experiments/paper/table3_e2e.csv")):
    if row["model"] == "gpt2-medium":
        vals = [row[k] for k in ("BLEU", "NIST", "METEOR", "ROUGE-L", "CIDEr")]
        lines.append(f"| GPT-2 M (paper, Table 3) | {row['method']} | {row['trainable_params_m']}M | – | – | – | "
                     + " | ".join(vals) + " |")
table = "\n".join(lines) + ("\n\nMETEOR and ROUGE-L ×100; mean ±sd over seeds of the test scores at each run's "
                            "best epoch (lowest held-out loss). Not comparable rows: another model, ~9% of "
                            "the training pairs. precision: bf16 = bf16 autocast (weights and optimizer fp32). CPU-h: "
                            "the runs' process CPU time, every thread, training, validation and decoding." if ok else "")
# cpu_time_s adds a resumed run's earlier attempts since 2026-12-05 (before: its last attempt only);
# train_time_s is the training steps' time over all attempts, decoding and evaluation excluded.
hours = sum(r["cost"].get("cpu_time_s") or 0 for r in recs) / 3600
steps = sum(r["cost"].get("train_time_s") or 0 for r in recs) / 3600
status = (f"{len(ok)} finished run(s) of {len(recs)} recorded; {hours:.2f} CPU-hours recorded (process CPU "
          f"time; a run parked before 2026-12-05 counts its last attempt only); {steps:.2f} hours of "
          "training steps over all attempts" if recs else "no finished run yet")
readme = Path("experiments/e2e_smollm2/README.md")
text = readme.read_text()
for name, body in (("status", status), ("table", table if ok else "(no finished run yet)")):
    text = re.sub(rf"(<!-- e2e:{name} -->\n).*?(\n<!-- /e2e:{name} -->)", lambda m: m.group(1) + body + m.group(2), text, flags=re.S)
readme.write_text(text)
print(status)
PY
