#!/usr/bin/env bash
# Rebuild every committed artifact of both CPU mini studies: the converged one (issue #18,
# experiments/mini_conv_report.sh, from its committed records and archived adapters) and, when its
# run folders are here, the superseded 62-step one (issue #9): results/mini*.jsonl, the tables in
# results/tables/mini/, the §7 figures in results/figures/mini/, and the README blocks between
# <!-- mini:NAME --> markers of experiments/mini/README.md. Trains nothing.
#   bash experiments/mini_report.sh        (from the repository root, with the venv active)
set -euo pipefail
cd "$(dirname "$0")/.."

bash experiments/mini_conv_report.sh
if [ ! -d runs/mini ]; then
  echo "the superseded 62-step study's run folders are not here: its committed artifacts stay as they are"
  exit 0
fi

for e in mini_lr mini mini_rank mini_matrices; do lora-repro collect "$e"; done
T="--out-dir=results/tables/mini"
lora-repro tables lr --experiments mini_lr "$T"
lora-repro tables table2 --experiments mini "$T"
lora-repro tables params --experiments mini "$T"
lora-repro tables table6 --experiments mini_rank "$T"
lora-repro tables table5 --experiments mini_matrices "$T"

# §7 on SST-2 (LoRA on Wq, Wv, α = 8). Different seeds for r=8 vs r=64: with one seed the first
# adapted matrix's initial A at r=8 is the first 8 rows of r=64's (README, Analysis).
R=runs/mini_rank/minilm/sst2 L=lr0.01_bs32_ep2_wd0.1_n1000 F=results/figures/mini
lora-repro analyze subspace --runs $R/lora_qv_r8_a8/$L/s0 $R/lora_qv_r64_a8/$L/s1 \
  --labels "r=8 (seed 0)" "r=64 (seed 1)" --name fig3_r8_vs_r64 --out $F
lora-repro analyze subspace --runs $R/lora_qv_r64_a8/$L/s0 $R/lora_qv_r64_a8/$L/s1 \
  --labels "r=64 (seed 0)" "r=64 (seed 1)" --name fig4_r64_seeds --out $F
lora-repro analyze spectrum --runs $R/lora_qv_r8_a8/$L/s0 $R/lora_qv_r64_a8/$L/s0 \
  --name spectrum_r8_r64 --out $F
lora-repro analyze amplification --runs $R/lora_qv_r4_a8/$L/s0 $R/lora_qv_r64_a8/$L/s0 \
  --name table7_r4_r64 --out $F

# The README shows the tables' rows (the lines starting with "|" after each file's title).
python - <<'EOF'
import re
from pathlib import Path

readme = Path("experiments/mini/README.md")
text = readme.read_text()
for name in ("table2", "table5", "table6"):
    table = Path(f"results/tables/mini/{name}.md").read_text()
    rows = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    pattern = rf"(<!-- mini:{name} -->\n)(?:.*?\n)?(<!-- /mini:{name} -->)"
    text, n = re.subn(pattern, lambda m: m.group(1) + rows + "\n" + m.group(2), text, flags=re.S)
    print(f"experiments/mini/README.md: {name} {'refreshed' if n else 'has no marker, left alone'}")
readme.write_text(text)
EOF
