#!/usr/bin/env bash
# The seeds' notebooks, reproduced on the embedded toy models, section by section in the seeds' order:
#   000 DAS (interchange interventions), 001 exploration (logit lens, direct attribution, activation patching),
#   002 head-level patching, 003 function induction (path patching), 004 ablations (InterpBench-style circuits);
# each section is one multirun (one process, models loaded once) into OUT/<section>/<job>/, each job with its
# report.html; then one gallery, OUT/index.html, links every report with a thumbnail of its first figure.
#
#   bash scripts/reproduce_seeds.sh [OUT]      # default OUT: results/seeds_<time>; needs `make install` (run if missing)
#
# With --model smollm2-135m (make seeds-real) the same sections run on the real SmolLM2-135M instead, preset by preset
# with sizes for 2 CPU cores (REAL below: fewer prompts, the layers and positions where IOI happens in a 30-layer
# model, the name movers this model has), and the presets that hold Gemma 3 270M (no edge methods: post-norms) once
# more on it; the toy-only presets (InterpBench circuits, toy addition) are left out:
#   bash scripts/reproduce_seeds.sh --model smollm2-135m [OUT]    # default OUT: results/seeds_real_<time>
#
# Everything runs on the CPU, offline. A preset that this checkout does not ship is skipped with a warning.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=""
if [ "${1:-}" = "--model" ]; then MODEL=${2:?--model needs a name}; shift 2; fi
BIN=${VENV:-.venv}/bin
[ -x "$BIN/circuitlab" ] || make install
[ -z "$MODEL" ] || "$BIN/python" -c "import gguf" 2>/dev/null || make install-real

SECTIONS=(
  "000_das:ioi_position,ioi_position_streams,ioi_position_heads_loo,ioi_position_heads_cumulative,ioi_position_boundless,ioi_name_vanilla,ioi_name_das,ioi_name_boundless,ioi_das_weights"
  "001_exploration:ioi_logit_lens,ioi_dla,ioi_patching,ioi_patching_named"
  "002_head_level:ioi_heads,ioi_head_groups,factual_recall_heads,ioi_attribution"
  "003_function_induction:addition_path_to_logits,addition_path_to_head,ioi_path_to_name_movers"
  "004_ablations:known_circuit_scales,toy_pca_ablation,toy_resample_scales"
)
PRESETS=$("$BIN/circuitlab" list experiments | awk 'NR > 1 {print $1}')   # the presets this circuitlab ships

# The real-model gallery: section|preset|model|overrides (sizes chosen to keep the whole under 30 minutes on 2 cores: about 17
# minutes measured with the machine shared by other jobs; the ablation covers the layers the other sections point at)
REAL=(
  "000_das|ioi_position|MODEL|sweep.layers=[8,12,16,20,24] sweep.positions=[S2,END] task.n_prompts=64 task.n_train=64 method.epochs=5"
  "000_das|ioi_name_das|MODEL|sweep.layers=[8,12,16,20,24] sweep.positions=[END] task.n_prompts=64 task.n_train=64 method.epochs=5"
  "001_exploration|ioi_logit_lens|MODEL|task.n_prompts=32"
  "001_exploration|ioi_dla|MODEL|task.n_prompts=32"
  "001_exploration|ioi_patching|MODEL|task.n_prompts=16"
  "001_exploration|ioi_dla|gemma3-270m|task.n_prompts=32"
  "002_head_level|ioi_heads|MODEL|task.n_prompts=16 sweep.positions=[all,S2,END]"
  "002_head_level|factual_recall_heads|MODEL|sweep.heads=each sweep.streams=[head_attention_value_output] sweep.positions=[all]"
  "002_head_level|ioi_attribution|MODEL|task.n_prompts=16"
  "003_circuits|ioi_path_to_name_movers|MODEL|task.n_prompts=16 method.receivers=NAME_MOVERS"
  "003_circuits|ioi_eap_ig|MODEL|task.n_prompts=16"
  "004_ablations|toy_resample_scales|MODEL|task.n_prompts=16 sweep.layers=[17,20,23,24,29] sweep.streams=[head_attention_value_output]"
)
NAME_MOVERS="[q.23.3,q.23.2]"   # SmolLM2-135M's strongest name movers at END (ioi_dla: heads 23.3 and 23.2 write the IO name), as path-patching receivers

if [ -n "$MODEL" ]; then
  OUT=${1:-results/seeds_real_$(date +%Y-%m-%d_%H-%M-%S)}
  mkdir -p "$OUT"
  start=$(date +%s)
  for entry in "${REAL[@]}"; do
    IFS='|' read -r name preset model overrides <<< "$entry"
    model=${model/MODEL/$MODEL}
    overrides=${overrides/NAME_MOVERS/$NAME_MOVERS}
    grep -qx "$preset" <<< "$PRESETS" || { echo "reproduce_seeds: warning: no preset $preset here; skipped" >&2; continue; }
    t0=$(date +%s)
    echo "== $name: $preset on $model"
    # shellcheck disable=SC2086  # the overrides are words
    "$BIN/circuitlab" run -m "+experiment=$preset" "model=$model" $overrides "hydra.sweep.dir=$OUT/$name" \
      "hydra.sweep.subdir=${preset}_$model" progress=false device=cpu > "$OUT/$name.$preset.$model.log" 2>&1 \
      || { echo "reproduce_seeds: $preset on $model failed (the gallery shows it); its log: $OUT/$name.$preset.$model.log" >&2; }
    echo "   $(( $(date +%s) - t0 )) s"
  done
  "$BIN/circuitlab" report "$OUT" --title "The seeds' notebooks on $MODEL (circuitlab $(git rev-parse --short HEAD 2>/dev/null || echo))" > /dev/null
  echo "all sections: $(( $(date +%s) - start )) s"
  echo "gallery: $OUT/index.html"
  exit 0
fi

OUT=${1:-results/seeds_$(date +%Y-%m-%d_%H-%M-%S)}
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
