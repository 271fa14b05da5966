"""Sharded sweep through a local launcher against the same sweep unsharded, side by side (wall time of the CLI).

A GPT-2-small-shaped model (12 layers, d_model 768, random weights, toy-ioi's word-level tokenizer) is written as a
local checkpoint; `+experiment=ioi_patching` (resid_pre, attn_out, mlp_out x every layer x every position) runs
(a) unsharded, (b) as a 4-job multirun `sweep.shard=0,1,2,3 sweep.num_shards=4` through the joblib launcher, then
`circuitlab merge`. Shards compute whole chunks of the unsharded plan, so the merged results.csv must equal the
unsharded one byte for byte.

    python bench/shards.py [--shards 4] [--jobs 4] [--prompts 16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from transformer_lens import HookedTransformer, HookedTransformerConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.patching import markdown_table  # noqa: E402
from circuitlab.models.hf_gpt2 import save_gpt2_dir  # noqa: E402
from circuitlab.models.loading import EMBEDDED_DIR  # noqa: E402
from circuitlab.models.toy import SPECIAL_TOKENS  # noqa: E402
from circuitlab.results import write_text  # noqa: E402


def write_model(directory: Path) -> None:
    tokenizer_json = (EMBEDDED_DIR / "toy-ioi" / "tokenizer.json").read_text()
    import json

    d_vocab = len(json.loads(tokenizer_json)["model"]["vocab"])
    cfg = HookedTransformerConfig(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=64, d_vocab=d_vocab,
                                  act_fn="gelu_new", normalization_type="LN", seed=0, device="cpu")
    save_gpt2_dir(HookedTransformer(cfg).eval(), directory, tokenizer_json, SPECIAL_TOKENS, extra={})


def timed(args: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_model(work / "model")
        common = ["+experiment=ioi_patching", "model=local", f"model.path={work / 'model'}", f"task.n_prompts={args.prompts}", "progress=false"]
        whole = timed(["run", *common, "run.dir=whole"], work)  # draws its figures, as the merge does
        rows = [["unsharded", "1 process", f"{whole:.1f}", "", "1.00x", "-"]]
        shards = ",".join(map(str, range(args.shards)))
        for jobs in sorted({args.jobs, 2}, reverse=True):
            sweep_dir = f"sharded{jobs}"
            sharded = timed(["run", "-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={sweep_dir}",
                             *common, "figures=false", f"sweep.shard={shards}", f"sweep.num_shards={args.shards}"], work)
            merge = timed(["merge", *[f"{sweep_dir}/{i}" for i in range(args.shards)], "--out", f"merged{jobs}"], work)
            same = (work / "whole" / "results.csv").read_bytes() == (work / f"merged{jobs}" / "results.csv").read_bytes()
            if not same:
                raise SystemExit("merged results differ from the unsharded run")
            total = sharded + merge
            rows.append([f"{args.shards} shards", f"joblib, {jobs} processes", f"{sharded:.1f}", f"{merge:.1f}", f"{whole / total:.2f}x", "identical"])
        n_rows = len(pd.read_csv(work / "whole" / "results.csv"))
    setting = f"ioi_patching on a GPT-2-small-shaped random model, {args.prompts} prompts, {n_rows} result rows, 2-core CPU"
    header = ["run", "how", "wall time (s)", "merge (s)", "speed-up incl. merge", "results.csv vs unsharded"]
    table = markdown_table(f"Sharded sweep through the local launcher ({setting})", header, rows)
    print(table)
    write_text(Path(__file__).parent / "results" / "shards.md", table)


if __name__ == "__main__":
    main()
