#!/usr/bin/env bash
# The seeds' notebooks, reproduced on the embedded toy models, section by section in the seeds' order:
#   000 DAS (interchange interventions), 001 exploration (logit lens, direct attribution, activation patching),
#   002 head-level patching, 003 function induction (path patching), 004 ablations (InterpBench-style circuits);
# each section is one multirun (one process, models loaded once) into OUT/<section>/<job>/, each job with its
# report.html; then one gallery, OUT/index.html, links every report with a thumbnail of its first figure.
#
#   bash scripts/reproduce_seeds.sh [OUT]      # default OUT: results/seeds_<time>; needs `make install` (run if missing)
#
# Everything runs on the CPU, offline. A preset that this checkout does not ship is skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/seeds_$(date +%Y-%m-%d_%H-%M-%S)}
BIN=${VENV:-.venv}/bin
[ -x "$BIN/circuitlab" ] || make install

SECTIONS=(
  "000_das:ioi_position,ioi_position_streams,ioi_position_heads_loo,ioi_position_heads_cumulative,ioi_position_boundless,ioi_name_vanilla,ioi_name_das,ioi_name_boundless,ioi_das_weights"
  "001_exploration:ioi_logit_lens,ioi_dla,ioi_patching,ioi_patching_named"
  "002_head_level:ioi_heads,ioi_head_groups,factual_recall_heads,ioi_attribution"
  "003_function_induction:addition_path_to_logits,addition_path_to_head,ioi_path_to_name_movers"
  "004_ablations:known_circuit_scales,toy_pca_ablation,toy_resample_scales"
)
PRESETS=$("$BIN/circuitlab" list experiments | awk 'NR > 1 {print $1}')   # the presets this circuitlab ships

mkdir -p "$OUT"
start=$(date +%s)
for section in "${SECTIONS[@]}"; do
  name=${section%%:*}
  wanted=()
  IFS=, read -r -a listed <<< "${section#*:}"
  for preset in "${listed[@]}"; do
    if grep -qx "$preset" <<< "$PRESETS"; then wanted+=("$preset"); else echo "reproduce_seeds: warning: no preset $preset here; skipped" >&2; fi
  done
  [ ${#wanted[@]} -gt 0 ] || continue
  joined=$(IFS=,; echo "${wanted[*]}")
  t0=$(date +%s)
  echo "== $name: $joined"
  "$BIN/circuitlab" run -m "+experiment=$joined" "hydra.sweep.dir=$OUT/$name" progress=false device=cpu \
    > "$OUT/$name.log" 2>&1 || { echo "reproduce_seeds: $name failed (the gallery shows it); its log: $OUT/$name.log" >&2; tail -n 3 "$OUT/$name.log" >&2; }
  echo "   $(( $(date +%s) - t0 )) s"
done
"$BIN/circuitlab" report "$OUT" --title "The seeds' notebooks on the embedded toy models (circuitlab $(git rev-parse --short HEAD 2>/dev/null || echo))" > /dev/null
echo "all sections: $(( $(date +%s) - start )) s"
echo "gallery: $OUT/index.html"
