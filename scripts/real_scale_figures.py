"""Run every preset at real-model scale and print each figure's pixel size and the run's key number.

    .venv/bin/python scripts/real_scale_figures.py --model smollm2-135m --out /tmp/me/scale   # or --model DIR
    .venv/bin/python scripts/real_scale_figures.py --out /tmp/me/scale --redraw      # figures + table only, no runs

The IOI presets run on `--model` (a named config, or a dir through `model=local`), shrunk in prompts and training (SHRINK) but not
in the shapes that stress figures and reports: every layer, every head, whole prompts. The presets whose task needs
their own toy model (toy-addition, known-circuit, toy-facts) run on it. Each run goes to OUT/<preset>; a preset whose
run dir already holds a manifest.json is not run again (delete the dir to rerun it). `--redraw` redraws every run's
figures from its CSVs (into OUT/<preset>/figures, the report too) with the circuitlab that is imported, so the same
runs can be drawn by two versions of the code (PYTHONPATH=<another checkout> for the other).

The table: preset, figure, width x height in pixels, whether it is within the size policy (MAX_SIDE px a side), then
the key number as the report states it. Exit status 1 when a figure is over the policy or a run failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

MAX_SIDE = 4000
OWN_MODEL = {"addition_eap", "addition_path_to_head", "addition_path_to_logits", "factual_recall_heads", "known_circuit_eap",
             "known_circuit_scales", "toy_pca_ablation"}
DAS = ["task.n_prompts=8", "task.n_train=16", "method.epochs=1", "method.batch_size=8"]
SHRINK = {  # per preset, on a real model: fewer prompts / less training / a sample of edges; all layers, heads and positions
    "ioi_das_weights": DAS, "ioi_name_boundless": DAS, "ioi_name_das": DAS, "ioi_name_vanilla": DAS, "ioi_position": DAS,
    "ioi_position_boundless": DAS, "ioi_position_heads_cumulative": DAS, "ioi_position_heads_loo": DAS,
    "ioi_position_streams": DAS,
    "ioi_heads": ["task.n_prompts=4"],
    "ioi_eap_ig": ["task.n_prompts=8", "method.ig_steps=2"],
    "ioi_edge_patching": ["task.n_prompts=4", "method.sample=3000"],
    "toy_resample_scales": ["task.n_prompts=8", "method.scales=[0,1,5]"],
    # the toy's name movers (heads 1.0, 1.2) mean nothing elsewhere: every head of every layer into the final stream
    "ioi_path_to_name_movers": ["task.n_prompts=8", "method.receivers=[resid_post.-1]"],
}


def presets() -> list[str]:
    from circuitlab.compose import CONFIG_DIR

    return sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def overrides(preset: str, model: str | None, run_dir: Path) -> list[str]:
    """The run's overrides: `model` is a named model config (smollm2-135m) or a local dir (model=local)."""
    out = [f"+experiment={preset}", f"run.dir={run_dir}", "progress=false"]
    if preset not in OWN_MODEL and model:
        chosen = ["model=local", f"model.path={model}"] if Path(model).exists() else [f"model={model}"]
        out += [*chosen, *SHRINK.get(preset, ["task.n_prompts=8"])]
    return out


def run(preset: str, model: str | None, out: Path, circuitlab: str) -> tuple[bool, float]:
    run_dir = out / preset
    if (run_dir / "manifest.json").is_file():
        return True, 0.0
    start = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    log = out / f"{preset}.log"
    with open(log, "w") as handle:
        code = subprocess.call([circuitlab, "run", *overrides(preset, model, run_dir)], stdout=handle, stderr=subprocess.STDOUT, env=env)
    if code:
        print(f"{preset}: failed (exit {code}); see {log}", file=sys.stderr)
    return code == 0, time.perf_counter() - start


def peak_memory(run_dir: Path) -> str:
    """The run's peak resident memory and its weights, from manifest.json ("" when the manifest has none)."""
    import json

    memory = json.loads((run_dir / "manifest.json").read_text()).get("memory") or {}
    if not memory.get("peak_rss_mb"):
        return ""
    return f"peak {memory['peak_rss_mb']} MB ({memory['peak_rss_mb'] / memory['weights_mb']:.1f} x weights)"


def measure(run_dir: Path, redraw: bool) -> tuple[list[tuple[str, int, int]], str]:
    """(figure, width, height) of every PNG of the run, and its key number as the report says it."""
    from PIL import Image

    from circuitlab import report
    from circuitlab.figures import render_run
    from circuitlab.results import read_results

    if redraw:
        for old in (run_dir / "figures").glob("*.p*"):
            old.unlink()
        render_run(run_dir)
        report.write_report(run_dir)
    sizes = []
    for png in sorted((run_dir / "figures").glob("*.png")):
        with Image.open(png) as image:
            sizes.append((png.stem, *image.size))
    results = read_results(run_dir)
    method = results["method"].iloc[0] if len(results) else None
    try:
        key = report.key_number(results, method, run_dir)
    except TypeError:  # an older circuitlab (PYTHONPATH=...): no run dir, no rule
        key = report.key_number(results, method)
    if not key or key.get("value") is None:
        return sizes, "(none)"
    text = f"{key['metric']} = {report.headline(key['value'])} at {key['where'] or 'the only location'}"
    return sizes, text + (f"  [{key['rule']}]" if key.get("rule") else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "--model-path", dest="model",
                        help="the IOI presets' model: a named config (smollm2-135m) or a local Hugging Face dir (model=local)")
    parser.add_argument("--out", required=True, type=Path, help="where the run dirs go (OUT/<preset>)")
    parser.add_argument("--presets", nargs="*", help="these presets only (default: all)")
    parser.add_argument("--redraw", action="store_true", help="no runs: redraw the figures and report of the runs in OUT")
    parser.add_argument("--circuitlab", default=str(Path(sys.executable).with_name("circuitlab")), help="the CLI to run presets with")
    args = parser.parse_args()
    chosen = args.presets or presets()
    args.out.mkdir(parents=True, exist_ok=True)
    bad = 0
    rows = []
    for preset in chosen:
        seconds = 0.0
        if not args.redraw:
            ok, seconds = run(preset, args.model, args.out, args.circuitlab)
            if not ok:
                bad += 1
                rows.append((preset, "(run failed)", "", "", ""))
                continue
        if not (args.out / preset / "results.csv").is_file():
            rows.append((preset, "(no run)", "", "", ""))
            continue
        sizes, key = measure(args.out / preset, args.redraw)
        memory = peak_memory(args.out / preset)
        print(f"{preset}: {key}" + (f" ({seconds:.0f} s)" if seconds else "") + (f"; {memory}" if memory else ""), flush=True)
        for stem, width, height in sizes or [("(no figures)", 0, 0)]:
            within = max(width, height) <= MAX_SIDE
            bad += not within
            rows.append((preset, stem, f"{width} x {height}", "ok" if within else "OVER", key))
    print(f"\n{'preset':30} {'figure':32} {'pixels':>13}  policy  key number")
    for preset, stem, pixels, within, key in rows:
        print(f"{preset:30} {stem:32} {pixels:>13}  {within:6}  {key}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
