#!/usr/bin/env bash
# circuitlab's GPU check: one prepared script for a GPU machine, about 3 minutes on an H200 (8 at most: every step
# has its own time limit, and all of them together a budget of GPU_CHECK_BUDGET_S = 470 s). It goes on past a
# failing step, prints one markdown summary table at the end and exits non-zero if any step failed.
#
#   bash scripts/gpu_check.sh                        # on a GPU machine; exits 3 at once where CUDA is not visible
#   GPU_CHECK_ALLOW_CPU=1 bash scripts/gpu_check.sh  # every step on the CPU with smaller sizes (tries the script out)
#   bash scripts/gpu_check.sh wheels                 # with PyPI at hand: put into .whl/ the packages that a GPU
#                                                    # image with torch but without network lacks (about 6 MB)
#
# Steps: 1 set-up (which Python; torch version, CUDA, device name), 2 `pytest -m gpu`, 3 activation and path
# patching on a GPT-2-small-shaped random model against TransformerLens in the same process (bench/patching.py,
# bench/path_patching.py --device cuda), 3c the edge methods (bench/circuit_discovery.py: EAP against one forward +
# backward, exact edge patching of 300 edges against two forwards per edge, the MIB curve), 4 a Gemma-2-shaped checkpoint (tests/hf_fixtures.py) run in bfloat16 and
# float32 on CUDA, 5 a 2-job `hydra/launcher=local_gpus` multirun.
#
# Which Python: $GPU_CHECK_PYTHON if set; else .venv if it imports torch and circuitlab; else, where .whl/ holds
# wheels, python3 (a GPU image's own CUDA torch, not the Makefile's torch pin) with those wheels installed into
# /tmp/gpu_check_site; else `make install` (needs network; from PyPI, torch==2.13.0 on Linux is a CUDA build).
# A machine without network needs .whl/ carried along: run `bash scripts/gpu_check.sh wheels` beforehand on a
# machine with PyPI (GPU_CHECK_WHEEL_PY=3.12, the GPU image's Python, by default).
#
# Table: $OUT/gpu_check.md when OUT is set, else /tmp/gpu_check.md, and every step's output in gpu_check.log beside
# it. Exit status: 0 every step passed, 1 some step failed, 3 no CUDA (GPU_CHECK_ALLOW_CPU unset). Run dirs go to a
# temporary dir, removed at the end unless GPU_CHECK_KEEP=1.

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$PWD
SCRIPT=$ROOT/scripts/gpu_check.sh
SITE=/tmp/gpu_check_site

# packages that `bash scripts/gpu_check.sh wheels` fetches: what circuitlab needs beyond a CUDA image's usual torch,
# transformers, pandas, matplotlib, scipy, statsmodels, pytest, joblib (all pure Python)
WHEELS=(transformer-lens better-abc fancy-einsum beartype typeguard transformers-stream-generator datasets dill multiprocess
        hydra-core omegaconf antlr4-python3-runtime hydra-joblib-launcher hydra-submitit-launcher submitit plotnine mizani)

# sizes and limits: a GPU run, or the CPU mode's smaller one (the same steps and code paths)
if [[ ${GPU_CHECK_ALLOW_CPU:-0} == 1 ]]; then
    CPU_MODE=1 DEVICE=cpu BUDGET_S=${GPU_CHECK_BUDGET_S:-1200} STEP_LIMIT_S=420
    BENCH_SIZE=(--layers 2 --prompts 2 --tokens 12)
    PATCH_ROWS=(resid_pre z_all_pos)
else
    CPU_MODE=0 DEVICE=cuda BUDGET_S=${GPU_CHECK_BUDGET_S:-470} STEP_LIMIT_S=120
    BENCH_SIZE=(--layers 12 --prompts 8 --tokens 18)
    PATCH_ROWS=(resid_pre attn_out mlp_out z_all_pos)
fi
BENCH_ATOL=1e-4  # the benchmarks' own tolerance between circuitlab and the peer

# ---------------------------------------------------------------------------------------------------------------
# helpers for the steps (each step runs as `bash gpu_check.sh __step NAME` under `timeout`, in $STEP_DIR)

# shellcheck disable=SC2153  # STEP_DIR: set by run_step for the step's process
detail() { printf '%s\n' "$*" >"$STEP_DIR/detail"; }  # the step's line in the table

py() { "$PY" "$@"; }  # the Python chosen by the set-up step (exported to the steps as PY)

# ---------------------------------------------------------------------------------------------------------------
# the steps

setup() {
    local python how version cuda name
    if [[ -n ${GPU_CHECK_PYTHON:-} ]]; then
        python=$GPU_CHECK_PYTHON how="GPU_CHECK_PYTHON"
    elif [[ -x .venv/bin/python ]] && .venv/bin/python -c "import torch, circuitlab" 2>/dev/null; then
        python=$ROOT/.venv/bin/python how="existing .venv"
    elif compgen -G ".whl/*.whl" >/dev/null; then
        python=$(command -v python3) how="python3 with .whl/ (offline)"
        "$python" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
            || { detail "$how: pip install of .whl/ into $SITE failed"; return 1; }
        echo "$SITE" >"$WORK/site"
    else
        how="make install"
        make install || { detail "make install failed (without network, carry .whl/: see the top of this script)"; return 1; }
        python=$ROOT/.venv/bin/python
    fi
    echo "$python" >"$WORK/python"
    PYTHONPATH=$(python_path) "$python" - >"$WORK/torch" <<'EOF' || { detail "$how ($python): torch, circuitlab or their packages do not import"; return 1; }
import torch, circuitlab, transformer_lens, hydra, plotnine
name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(torch.__version__, torch.cuda.is_available(), name, sep="\t")
EOF
    IFS=$'\t' read -r version cuda name <"$WORK/torch"
    detail "$how ($python): torch $version, torch.cuda.is_available() $cuda, $name"
}

gpu_tests() {
    py -m pytest -m gpu -q -p no:cacheprovider | tee "$STEP_DIR/pytest.out"
    local rc=${PIPESTATUS[0]} last counts=() word n passed=0
    last=$(grep -E '[0-9]+ (passed|failed|skipped|errors?|deselected)' "$STEP_DIR/pytest.out" | tail -n 1)
    for word in passed failed skipped error deselected; do
        n=$(grep -oE "[0-9]+ ${word}s?" <<<"$last" | grep -oE '^[0-9]+' || true)
        [[ $word == passed ]] && passed=${n:-0}
        [[ $word == deselected || ($word == error && -z $n) ]] || counts+=("$word ${n:-0}")
    done
    local text
    text=$(printf '%s, ' "${counts[@]}")
    text=${text%, }
    if (( CPU_MODE )); then
        detail "$text (CPU mode: tests marked gpu skip without CUDA)"
    elif (( rc == 0 && passed == 0 )); then
        detail "$text: nothing ran (did pytest see CUDA?)"
        return 1
    else
        detail "$text"
    fi
    return "$rc"
}

bench_rows() {  # bench_rows JSON PEER: the step's line and one table row per sweep (fields split by \x1f, $SEP)
    py - "$1" "$2" "$BENCH_ATOL" "$STEP_DIR" <<'EOF'
import json, sys
from pathlib import Path
path, peer, atol, step_dir = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), Path(sys.argv[4])
if not path.exists():
    sys.exit(0)
run = json.loads(path.read_text())
rows = []
for r in run["rows"]:
    points = "x".join(map(str, r["points"])) if isinstance(r["points"], list) else r["points"] if isinstance(r["points"], str) else f'{r["points"]} senders'
    ok = r["max_abs_diff"] < atol
    rows.append(f'↳ {r["name"]} ({points})\x1f{"PASS" if ok else "FAIL"}\x1f\x1f'
                f'circuitlab {r["circuitlab_s"]:.3f} s, {peer} {r["peer_s"]:.3f} s, '
                f'ratio {r["peer_s"] / r["circuitlab_s"]:.1f}x (peer / circuitlab), max abs diff {r["max_abs_diff"]:.1e}')
(step_dir / "subrows").write_text("".join(row + "\n" for row in rows))
(step_dir / "detail").write_text(f'{run["setting"]}; {len(rows)} sweeps, tolerance {atol:g}\n')
EOF
}

activation_patching() {
    py bench/patching.py --device "$DEVICE" "${BENCH_SIZE[@]}" --rows "${PATCH_ROWS[@]}" --json "$STEP_DIR/rows.json"
    local rc=$?
    bench_rows "$STEP_DIR/rows.json" transformer_lens
    return "$rc"
}

path_patching() {
    py bench/path_patching.py --device "$DEVICE" "${BENCH_SIZE[@]}" --json "$STEP_DIR/rows.json"
    local rc=$?
    bench_rows "$STEP_DIR/rows.json" "TransformerLens hooks (2 forwards per sender)"
    return "$rc"
}

circuit_discovery() {
    py bench/circuit_discovery.py --device "$DEVICE" "${BENCH_SIZE[@]}" --edges 300 --json "$STEP_DIR/rows.json"
    local rc=$?
    bench_rows "$STEP_DIR/rows.json" "the row's peer"
    return "$rc"
}

gemma2_bfloat16() {
    local fixture=$WORK/gemma2 dtype rc=0
    py -c "import sys; from tests.hf_fixtures import build; build('gemma2', sys.argv[1])" "$fixture" \
        || { detail "building the Gemma-2 fixture failed"; return 1; }
    for dtype in bfloat16 float32; do
        py -m circuitlab.cli run model=local model.path="$fixture" +experiment=ioi_patching device="$DEVICE" model.dtype="$dtype" \
            progress=false figures=false run.dir="$WORK/gemma2_$dtype" || rc=1
    done
    py - "$WORK/gemma2_bfloat16" "$WORK/gemma2_float32" "$STEP_DIR/detail" <<'EOF' || rc=1
import json, sys
from pathlib import Path
import pandas as pd
runs = {"bfloat16": Path(sys.argv[1]), "float32": Path(sys.argv[2])}
missing = [name for name, d in runs.items() if not (d / "results.csv").is_file()]
if missing:
    Path(sys.argv[3]).write_text(f"no results.csv from the {' and '.join(missing)} run\n")
    sys.exit(1)
frames = {name: pd.read_csv(d / "results.csv") for name, d in runs.items()}
where = {name: json.loads((d / "manifest.json").read_text())["device"] for name, d in runs.items()}
bf16, fp32 = frames["bfloat16"], frames["float32"]
keys = [c for c in fp32.columns if c != "value"]
same_rows = bf16[keys].equals(fp32[keys])
diff = (bf16["value"] - fp32["value"]).abs()
both_nan = bf16["value"].isna() & fp32["value"].isna()
per_metric = diff.groupby(fp32["metric"]).max()
text = (f"both ran ({where['bfloat16']}, {where['float32']}), {len(fp32)} values; max abs diff of value bf16 vs fp32 "
        f"{diff.max():.3g} (" + ", ".join(f"{m} {v:.3g}" for m, v in per_metric.items()) + f"); fp32 |value| up to {fp32['value'].abs().max():.3g}")
ok = same_rows and bool((diff.notna() | both_nan).all())
if not same_rows:
    text = "the two runs' rows differ; " + text
elif not ok:
    text = "NaN in one run only; " + text
Path(sys.argv[3]).write_text(text + "\n")
sys.exit(0 if ok else 1)
EOF
    return "$rc"
}

local_gpus_multirun() {
    local sweep=$WORK/multirun rc
    py -m circuitlab.cli run -m hydra/launcher=local_gpus +experiment=ioi_patching task.n_prompts=16 seed=0,1 \
        progress=false figures=false results_dir="$WORK/results" hydra.sweep.dir="$sweep"
    rc=$?
    py - "$sweep" "$DEVICE" "$STEP_DIR/detail" <<'EOF' || rc=1
import json, sys
from pathlib import Path
import pandas as pd
sweep, device, out = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
if not (sweep / "index.csv").is_file():
    out.write_text(f"no index.csv in {sweep}\n")
    sys.exit(1)
index = pd.read_csv(sweep / "index.csv")
run_dirs = [Path(d) if Path(d).is_absolute() else Path.cwd() / d for d in index["run_dir"]]
written = [(d / "results.csv").is_file() for d in run_dirs]
devices = [json.loads((d / "manifest.json").read_text())["device"] if (d / "manifest.json").is_file() else "?" for d in run_dirs]
ok = len(index) == 2 and list(index["status"]) == ["done", "done"] and all(written) and all(d.startswith(device) for d in devices)
out.write_text(f"index.csv: {len(index)} jobs, status {', '.join(map(str, index['status']))}; results.csv written by "
               f"{sum(written)} of {len(run_dirs)}; devices {', '.join(devices)}\n")
sys.exit(0 if ok else 1)
EOF
    return "$rc"
}

# ---------------------------------------------------------------------------------------------------------------
# the driver: steps, table, exit status

python_path() {  # PYTHONPATH for the chosen Python: the offline wheels (if used), then the repo
    local site=""
    [[ -f $WORK/site ]] && site="$(cat "$WORK/site"):"
    echo "${site}${ROOT}${PYTHONPATH:+:$PYTHONPATH}"
}

SEP=$'\x1f'  # between the fields of $WORK/rows (a tab would let read merge empty fields)
add_row() { printf "%s$SEP%s$SEP%s$SEP%s\n" "$@" >>"$WORK/rows"; }

write_table() {
    local mode="CPU mode (GPU_CHECK_ALLOW_CPU=1, smaller sizes)" label result seconds text
    (( CPU_MODE )) || mode="cuda"
    {
        echo "# circuitlab GPU check, $(date -u '+%Y-%m-%d %H:%M UTC'), $mode, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
        echo
        echo "| step | result | seconds | details |"
        echo "| --- | --- | ---: | --- |"
        while IFS=$SEP read -r label result seconds text; do
            echo "| $label | $result | $seconds | ${text//|/\\|} |"
        done <"$WORK/rows"
        echo
        echo "overall: ${OVERALL:-$( (( FAILED )) && echo FAIL || echo PASS )} in $SECONDS s"
    } >"$TABLE"
}

run_step() {  # run_step LABEL LIMIT_S FUNCTION: FUNCTION under `timeout` (its output to the log), then its table row
    local label=$1 limit=$2 fn=$3 left=$((DEADLINE - SECONDS)) start rc result text
    (( limit > left )) && limit=$left
    local step_dir=$WORK/$fn
    mkdir -p "$step_dir"
    if (( limit < 5 )); then
        add_row "$label" FAIL "" "not run: the budget of $BUDGET_S s is spent"
        FAILED=1 LAST="gpu_check: $label: FAIL (not run)"
        return 1
    fi
    printf '\n===== %s (limit %d s) =====\n' "$label" "$limit" >>"$LOG"
    start=$SECONDS
    STEP_DIR=$step_dir timeout --kill-after=10 "$limit" bash "$SCRIPT" __step "$fn" >"$step_dir/output" 2>&1
    rc=$?
    local took=$((SECONDS - start))
    cat "$step_dir/output" >>"$LOG"
    text=$(cat "$step_dir/detail" 2>/dev/null)
    result=PASS
    if (( rc == 124 || rc == 137 )); then
        result=FAIL text="timed out after $limit s${text:+; $text}"
    elif (( rc != 0 )); then
        # without a detail of its own, the step's last line of output (an exception's, say)
        [[ -n $text ]] || text=$(grep -v '^[[:space:]]*$' "$step_dir/output" | tail -n 1 | cut -c 1-200)
        result=FAIL text="exit $rc${text:+: $text} (see gpu_check.log)"
    fi
    add_row "$label" "$result" "$took" "$text"
    [[ -f $step_dir/subrows ]] && cat "$step_dir/subrows" >>"$WORK/rows"
    [[ $result == PASS ]] || FAILED=1
    write_table
    LAST="gpu_check: $label: $result ($took s)"
    [[ $result == PASS ]]
}

fetch_wheels() {
    local python=${GPU_CHECK_PYTHON:-$ROOT/.venv/bin/python} target=${GPU_CHECK_WHEEL_PY:-3.12} name version
    rm -rf .whl && mkdir -p .whl || return 1
    for name in "${WHEELS[@]}"; do
        version=$("$python" -c "import sys; from importlib.metadata import version; print(version(sys.argv[1]))" "$name") || return 1
        # a wheel for the target Python, else a pure-Python wheel built here from the sdist
        "$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$target" -d .whl "$name==$version" 2>/dev/null \
            || "$python" -m pip wheel --quiet --no-deps -w .whl "$name==$version" || { echo "gpu_check: no wheel for $name==$version" >&2; return 1; }
    done
    ls .whl && du -sh .whl
}

main() {
    REPORT_DIR=${OUT:-/tmp}
    TABLE=$REPORT_DIR/gpu_check.md LOG=$REPORT_DIR/gpu_check.log
    mkdir -p "$REPORT_DIR"
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX") || exit 1
    [[ ${GPU_CHECK_KEEP:-0} == 1 ]] || trap 'rm -rf "$WORK"' EXIT
    export WORK
    : >"$WORK/rows"
    : >"$LOG"
    DEADLINE=$((SECONDS + BUDGET_S)) FAILED=0 LAST=""

    run_step "1. set-up" 300 setup
    local setup_ok=$? version="" cuda="" name=""
    if (( setup_ok == 0 )); then
        PY=$(cat "$WORK/python")
        PYTHONPATH=$(python_path)
        export PY PYTHONPATH
        IFS=$'\t' read -r version cuda name <"$WORK/torch"
        if [[ $cuda != True ]] && (( ! CPU_MODE )); then
            local line="CUDA is not available to $PY (torch $version); no step run (GPU_CHECK_ALLOW_CPU=1 runs them on the CPU)"
            add_row "no CUDA" FAIL "" "$line"
            OVERALL="not run (no CUDA)" write_table
            echo "gpu_check: $line" >&2
            exit 3
        fi
    fi
    if (( CPU_MODE )); then
        echo "gpu_check: CPU mode (GPU_CHECK_ALLOW_CPU=1): every step on the CPU with smaller sizes"
    fi
    echo "$LAST"
    if (( setup_ok == 0 )); then
        echo "gpu_check: $PY: torch $version, torch.cuda.is_available() $cuda, $name; log in $LOG"
    fi

    local steps=("2. pytest -m gpu:gpu_tests" "3a. activation patching vs TransformerLens:activation_patching"
                 "3b. path patching vs TransformerLens:path_patching"
                 "3c. edge methods vs their references (EAP, exact edge patching, MIB curve):circuit_discovery"
                 "4. Gemma-2 fixture, bfloat16 vs float32:gemma2_bfloat16"
                 "5. local_gpus multirun, 2 jobs:local_gpus_multirun")
    local step
    for step in "${steps[@]}"; do
        if (( setup_ok != 0 )); then
            add_row "${step%%:*}" FAIL "" "not run: set-up failed"
            continue
        fi
        run_step "${step%%:*}" "$STEP_LIMIT_S" "${step##*:}"
        echo "$LAST"
    done
    write_table
    echo
    cat "$TABLE"
    echo "(written to $TABLE)"
    (( FAILED == 0 ))
}

case ${1:-} in
    __step) "$2" ;;           # internal: one step, run by run_step under `timeout`
    wheels) fetch_wheels ;;
    "") main ;;
    *) echo "usage: bash scripts/gpu_check.sh [wheels]   (see the top of the script)" >&2; exit 2 ;;
esac
