"""Peak memory per method at a real model's shape, against the weights' size.

A Llama-shaped model with random weights: SmolLM2-135M's config (30 layers, d_model 576, 9 query / 3 key-value heads,
d_mlp 1536, 49152-token vocabulary, tied embeddings), built by `transformers` (LlamaForCausalLM(LlamaConfig(...)),
save_pretrained to a temp dir with toy-ioi's word-level tokenizer files) and read through `model=local`. Each method
runs its preset (shrunk where a full sweep would take long on a CPU; the shapes that set memory are kept: 30 layers,
the preset's prompt count, DAS's 8 layers x 4 positions) in its own `circuitlab run` subprocess, so that each peak is
its own (the child's peak resident set, from wait4), and a first subprocess only loads the model. The table gives
each peak in MB and in multiples of the weights, the run's own peaks while loading the model and while the method
works (manifest["memory"]["by_phase"]) and the wall time; it is written to bench/results/memory.md (default
setting).

    python bench/memory.py                                  # every row (DAS also at 256, 2048, 4096 MB), ~25 minutes on 2 cores
    python bench/memory.py --rows das dla --budget 512      # some rows, another memory_budget_mb
    python bench/memory.py --rows das --das-budgets 512 8192 # DAS's peak against its budget
    python bench/memory.py --model smollm2-135m --rows load eap eap_ig "edge patching" --das-budgets \
        --write bench/results/memory_smollm2.md                 # the edge methods on the real model

A row whose resident set passes --cap-mb (default 10000) is killed and listed as "> peak". `--model NAME` runs the rows
on a named model config instead (e.g. smollm2-135m, the real weights; its IOI prompts are its own BPE tokens, so the
positions differ from the random model's word-level ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
EVERY_4TH = "[0,4,8,12,16,20,24,28]"
# row -> the preset and the overrides that shrink its sweep (not the prompts' count, nor the depth a forward runs;
# DAS: 20 train / 20 test pairs and one epoch, its memory follows its batch of 20 training prompts)
ROWS = {
    "load": [],
    "activation patching": ["+experiment=ioi_patching", "sweep.layers=[0,15,29]"],
    "head patching": ["+experiment=ioi_heads", "sweep.layers=[0,29]", "sweep.positions=[all]"],
    "attribution patching": ["+experiment=ioi_attribution", "sweep.layers=[0,15,29]"],
    "path patching": ["+experiment=ioi_path_to_name_movers", "method.receivers=[q.29.0]", "sweep.layers=[0,15,28]"],
    "ablation": ["+experiment=ioi_patching", "method=ablation", "sweep.layers=[0,15,29]", "sweep.positions=[all]"],
    "direct attribution": ["+experiment=ioi_dla"],
    "das": ["+experiment=ioi_position", f"sweep.layers={EVERY_4TH}", "task.n_train=20", "task.n_prompts=20", "method.epochs=1"],
    "eap": ["+experiment=ioi_eap"],
    "eap_ig": ["+experiment=ioi_eap_ig"],
    "edge patching": ["+experiment=ioi_edge_patching", "method.sample=200"],
}
ALIASES = {"dla": "direct attribution", "patching": "activation patching", "heads": "head patching"}


def write_checkpoint(directory: Path, seed: int = 0) -> float:
    """SmolLM2-135M's config with random weights, as `save_pretrained` writes it, and toy-ioi's tokenizer files;
    returns the weights' size in MB (the safetensors file)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitlab.models.loading import EMBEDDED_DIR

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval().save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_DIR / "toy-ioi" / name, directory / name)
    pad_vocabulary(directory / "tokenizer.json", SMOLLM2["vocab_size"])
    return sum(p.stat().st_size for p in directory.glob("*.safetensors")) / 2**20


def pad_vocabulary(path: Path, size: int) -> None:
    """The word-level vocabulary filled up to the embedding's rows with unused tokens (a tokenizer far smaller than
    the embedding is refused as another model's); the IOI prompts' tokens keep their ids."""
    tokenizer = json.loads(path.read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), size)})
    path.write_text(json.dumps(tokenizer))


LOAD_ONLY = """
import sys
from circuitlab.config import ModelConfig
from circuitlab.models import loading
from circuitlab import memory
model = loading.load_model(ModelConfig(source="local", name="local", path=sys.argv[1]), device="cpu")
print(memory.weights_mb(model))
"""


LOAD_NAMED = """
import sys
from circuitlab.compose import compose_config
from circuitlab.models import loading
from circuitlab import memory
cfg = compose_config([f"model={sys.argv[1]}"])
model = loading.load_model(cfg.model, device="cpu")
print(memory.weights_mb(model))
"""


def resident_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def run_row(row: str, overrides: list[str], checkpoint: Path, out: Path, budget: int | None, cap_mb: float = float("inf"),
            model: str | None = None) -> dict:
    """One row in its own process: its peak resident set (wait4), wall time and manifest["memory"]. `model`: a
    named model config instead of the random checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run_dir = out / row.replace(" ", "_")
    chosen = [f"model={model}"] if model else ["model=local", f"model.path={checkpoint}"]
    if row == "load":
        command = [sys.executable, "-c", LOAD_NAMED if model else LOAD_ONLY, model or str(checkpoint)]
    else:
        command = [sys.executable, "-m", "circuitlab.cli", "run", *overrides, *chosen,
                   f"run.dir={run_dir}", "figures=false", "progress=false", *([f"memory_budget_mb={budget}"] if budget else [])]
    out.mkdir(parents=True, exist_ok=True)
    log = out / f"{row.replace(' ', '_')}.log"
    started, killed = time.perf_counter(), False
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, text=True, env=env)
        while True:  # the child's own peak resident set comes from wait4 (ru_maxrss, KiB); past the cap it is killed
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if not killed and resident_mb(proc.pid) > cap_mb:
                proc.kill()
                killed = True
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = {"row": row, "seconds": time.perf_counter() - started, "returncode": proc.returncode, "peak_mb": usage.ru_maxrss / 1024}
    text = log.read_text()
    if killed:
        result["error"] = f"killed past --cap-mb {cap_mb}"
    elif proc.returncode != 0:
        result["error"] = (text.strip().splitlines() or ["?"])[-1]
    elif row == "load":
        result["weights_mb"] = float(text.strip().splitlines()[-1])
    else:
        result["record"] = json.loads((run_dir / "manifest.json").read_text()).get("memory", {})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), help=f"of: {', '.join(ROWS)} (or dla, patching, heads)")
    parser.add_argument("--budget", type=int, default=None, help="memory_budget_mb for every row (default: the config's, 1024 on CPU)")
    parser.add_argument("--das-budgets", nargs="*", type=int, default=[256, 2048, 4096], help="DAS again at each of these memory_budget_mb")
    parser.add_argument("--model", default=None, help="a named model config (e.g. smollm2-135m) instead of the random checkpoint")
    parser.add_argument("--write", default=None, help="write the table to this file (default: bench/results/memory.md after a full default run)")
    parser.add_argument("--cap-mb", type=float, default=10000, help="kill a row whose resident set passes this (a shared machine's safety)")
    args = parser.parse_args()
    rows = [ALIASES.get(r, r) for r in args.rows]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        checkpoint = Path(tmp) / "random-135m"  # no architecture name in the path: TransformerLens branches on it
        checkpoint.mkdir()
        file_mb = write_checkpoint(checkpoint) if args.model is None else float("nan")
        jobs = [(row, ROWS[row], args.budget) for row in rows] + [("das", ROWS["das"], b) for b in args.das_budgets]
        results = []
        for row, overrides, budget in jobs:
            result = run_row(row, overrides, checkpoint, Path(tmp) / f"runs-{budget}", budget, args.cap_mb, args.model)
            result["budget"] = budget
            results.append(result)
            print(json.dumps(result), flush=True)
    print_table(results, file_mb, args)


def print_table(results: list[dict], file_mb: float, args) -> None:
    weights = next((r["weights_mb"] for r in results if r.get("weights_mb")), None) or file_mb
    machine = f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')}"
    model = (f"model={args.model}: {weights:.0f} MB of weights as loaded" if args.model else
             f"SmolLM2-135M-shaped random Llama: {weights:.0f} MB of weights as loaded, {file_mb:.0f} MB on disk")
    lines = [f"# Peak memory per method ({model}; {machine})", "",
             "Peak: the process's peak resident set (wait4, as /usr/bin/time -v reports it). Load / method: the run's own "
             "peaks while it loads the model and while the method works (manifest[\"memory\"][\"by_phase\"], sampled every 10 ms).", "",
             "| row | memory_budget_mb | peak (MB) | x weights | load (MB) | method (MB) | wall (s) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        if r["returncode"] != 0:
            peak = f"> {r['peak_mb']:.0f}" if "killed" in r.get("error", "") else "failed"
            lines.append(f"| {r['row']} | {r['budget'] or 'default'} | {peak} ({r.get('error', '')[:80]}) | | | | {r['seconds']:.0f} |")
            continue
        record = r.get("record", {})
        phases = record.get("by_phase", {})
        budget = r["budget"] or record.get("budget_mb", "")
        lines.append(f"| {r['row']} | {budget} | {r['peak_mb']:.0f} | {r['peak_mb'] / weights:.1f} | {phases.get('load_model', '')} | "
                     f"{phases.get('method', '')} | {r['seconds']:.0f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    out = args.write
    if out is None and args.rows == list(ROWS) and args.budget is None and args.model is None and args.das_budgets == [256, 2048, 4096]:
        out = Path(__file__).parent / "results" / "memory.md"
    if out is not None:
        from circuitlab.storage import write_text

        write_text(Path(out), text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
