#!/usr/bin/env bash
# Rebuild the converged mini study's committed artifacts (issue #18): results/mini_conv*.jsonl (from
# the run folders present; records collected earlier are kept), the tables in results/tables/mini_conv/,
# the §7 adapters archived under results/mini_conv/adapters/ and their figures and Table 7 in
# results/figures/mini_conv/, the learning curves (from the records), and the blocks between
# <!-- conv:NAME --> markers of experiments/mini_conv/README.md (experiments/mini_conv/report.py).
# Trains nothing; run it from the repository root, with the venv active, after (or while) the sweeps run.
set -euo pipefail
cd "$(dirname "$0")/.."

EXPS="mini_conv_lr mini_conv_bf16 mini_conv_sweep mini_conv mini_conv_rank mini_conv_matrices"
for e in $EXPS; do
  if [ -d "runs/$e" ]; then lora-repro collect "$e"; fi
done
have() { [ -s "results/$1.jsonl" ]; }
T=results/tables/mini_conv F=results/figures/mini_conv A=results/mini_conv/adapters
lr_exps=mini_conv_lr; if have mini_conv_sweep; then lr_exps=mini_conv_lr,mini_conv_sweep; fi
lora-repro tables lr --experiments "$lr_exps" --out-dir "$T" > /dev/null
if have mini_conv; then
  lora-repro tables table2 --experiments mini_conv --out-dir "$T" > /dev/null
  lora-repro tables params --experiments mini_conv --out-dir "$T" > /dev/null
fi
if have mini_conv_rank; then lora-repro tables table6 --experiments mini_conv_rank --out-dir "$T" > /dev/null; fi
if have mini_conv_matrices; then
  lora-repro tables table5 --experiments mini_conv_matrices --out-dir "$T" > /dev/null  # qv r=4: reused
fi

# §7 on SST-2, LoRA on Wq, Wv, α = 8, converged (mini_conv_rank; its r = 8 runs are the main table's,
# reused, so their adapters are in runs/mini_conv). The adapters are archived in git (a few MB), so
# the figures rebuild without the run folders. Different seeds for r=8 vs r=64: with one seed the
# first adapted matrix's initial A at r=8 is the first 8 rows of r=64's.
for R in runs/mini_conv_rank/minilm/sst2 runs/mini_conv/minilm/sst2; do
  for run in "$R"/lora_qv_r{4,8,64}_a8/*/s{0,1,2}; do
    if [ -s "$run/adapter.safetensors" ]; then
      dst="$A/sst2/${run#"$R"/}"
      mkdir -p "$dst" && cp "$run"/adapter.safetensors "$run"/adapter.json "$run"/result.json "$dst"/
    fi
  done
done
S=$A/sst2
one() { compgen -G "$S/lora_qv_r$1_a8/*/s$2" | head -n 1 || true; }
r4s0=$(one 4 0) r64s0=$(one 64 0) r64s1=$(one 64 1)
# r = 8: the lowest seed archived (seed 0's adapter predates the archive), against r = 64 of another
r8="" r8seed=""
for s in 0 1 2; do r8=$(one 8 $s) && [ -n "$r8" ] && r8seed=$s && break; done
other=0; if [ "$r8seed" = 0 ]; then other=1; fi
r64other=$(one 64 $other)
if [ -n "$r8" ] && [ -n "$r64other" ]; then
  lora-repro analyze subspace --runs "$r8" "$r64other" \
    --labels "r=8 (seed $r8seed)" "r=64 (seed $other)" --name fig3_r8_vs_r64 --out "$F" > /dev/null
fi
if [ -n "$r64s0" ] && [ -n "$r64s1" ]; then
  lora-repro analyze subspace --runs "$r64s0" "$r64s1" --labels "r=64 (seed 0)" "r=64 (seed 1)" \
    --name fig4_r64_seeds --out "$F" > /dev/null
fi
if [ -n "$r8" ] && [ -n "$r64other" ]; then
  lora-repro analyze spectrum --runs "$r8" "$r64other" --name spectrum_r8_r64 --out "$F" > /dev/null
fi
if [ -n "$r4s0" ] && [ -n "$r64s0" ]; then
  lora-repro analyze amplification --runs "$r4s0" "$r64s0" --labels "r=4 s0" "r=64 s0" \
    --name table7_r4_r64 --out "$F" > /dev/null
fi
python experiments/mini_conv/report.py
