#!/usr/bin/env bash
# Rebuild the converged mini study's committed artifacts (issue #18) from its runs: results/mini_conv*.jsonl,
# the tables in results/tables/mini_conv/, the learning curves in results/figures/mini_conv/ and the
# blocks between <!-- conv:NAME --> markers of experiments/mini_conv/README.md. Trains nothing; run it
# from the repository root, with the venv active, after (or while) the sweeps in that README run.
set -euo pipefail
cd "$(dirname "$0")/.."

for e in mini_conv_lr mini_conv_bf16; do
  if [ -d "runs/$e" ]; then lora-repro collect "$e"; fi
done
T=results/tables/mini_conv F=results/figures/mini_conv
lora-repro tables lr --experiments mini_conv_lr --out-dir "$T" > /dev/null
# Learning curves (history.jsonl is not committed: the curves are, as CSV and figures)
for m in full lora_qv_r8_a8; do
  if compgen -G "runs/mini_conv_lr/minilm/*/$m/*/s0/history.jsonl" > /dev/null; then
    lora-repro analyze curves --runs "runs/mini_conv_lr/minilm/*/$m/*/s0" --name "curves_$m" --out "$F" > /dev/null
  fi
done

python - <<'PY'
import json, re
from pathlib import Path

def rows(name):
    p = Path(f"results/{name}.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []

# bf16 vs fp32: the same run in both precisions (seed 0), dev score and cost
recs = [r for r in rows("mini_conv_bf16") if r["status"] == "success"]
lines = ["| method | precision | dev accuracy | best epoch | tokens/s | train s |", "|---|---|---|---|---|---|"]
for r in sorted(recs, key=lambda r: (r["config"]["method"]["name"], r["config"]["train"]["precision"])):
    c, m = r["cost"], r["metrics"]
    lines.append(f"| {r['config']['method']['name']} | {r['config']['train']['precision']} | "
                 f"{100 * m['primary']:.1f} | {m['best_epoch']:.0f} | {c['tokens_per_s']:,.0f} | {c['train_time_s']:,.0f} |")
bf16 = "\n".join(lines)
# Issue #18's floors for full fine-tuning (the budget must let it converge), from the lr sweep
FLOORS = {"sst2": ("SST-2 acc", 86), "mrpc": ("MRPC acc", 78), "stsb": ("STS-B Pearson", 82),
          "cola": ("CoLA MCC", 25), "rte": ("RTE acc", 57)}
ft = [r for r in rows("mini_conv_lr") if r["status"] == "success" and r["config"]["method"]["name"] == "full"]
lines = ["| task | floor | full FT, seed 0 (best lr) | epoch | meets it? |", "|---|---|---|---|---|"]
for task, (what, floor) in FLOORS.items():
    runs = [r for r in ft if r["config"]["task"]["name"] == task]
    if not runs:
        lines.append(f"| {what} | {floor} | not run yet | | |")
        continue
    best = max(runs, key=lambda r: r["metrics"]["primary"])
    v = 100 * best["metrics"]["primary"]
    lines.append(f"| {what} | {floor} | {v:.1f} (lr {best['config']['train']['lr']:g}, "
                 f"{len(runs)} lr(s) run) | {best['metrics']['best_epoch']:.0f} | {'yes' if v >= floor else 'no'} |")
floors = "\n".join(lines)
lr = "\n".join(l for l in Path("results/tables/mini_conv/lr.md").read_text().splitlines() if l.startswith("|"))
# CPU-hours: training + evaluation time of every finished run (train_time_s counts across resumes)
done = [r for n in ("mini_conv_lr", "mini_conv_bf16") for r in rows(n) if r["status"] == "success"]
hours = sum(r["cost"]["train_time_s"] for r in done) / 3600
status = f"{len(done)} finished runs; {hours:.2f} CPU-hours of training steps (one core each)"
readme = Path("experiments/mini_conv/README.md")
text = readme.read_text()
for name, block in (("bf16", bf16), ("lr", lr), ("status", status), ("floors", floors)):
    pattern = rf"(<!-- conv:{name} -->\n)(?:.*?\n)?(<!-- /conv:{name} -->)"
    text, n = re.subn(pattern, lambda m: m.group(1) + block + "\n" + m.group(2), text, flags=re.S)
    print(f"experiments/mini_conv/README.md: {name} {'refreshed' if n else 'has no marker'}")
readme.write_text(text)
PY
