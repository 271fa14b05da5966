"""Per architecture, on the tiny random-weight fixtures of tests/hf_fixtures.py: the largest final-position logit
difference against transformers (eager attention, float32), the largest difference of activation patching against
TransformerLens' `patching.get_act_patch_resid_pre`, and whether each experiment preset runs end to end through
`model=local`. Prints a markdown table.

    .venv/bin/python scripts/architecture_report.py [ARCH ...]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from transformer_lens import patching

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from circuitlab import compose  # noqa: E402
from circuitlab.config import ModelConfig  # noqa: E402
from circuitlab.errors import CircuitlabError  # noqa: E402
from circuitlab.locations import enumerate_locations  # noqa: E402
from circuitlab.engine.sweep import patch_sweep  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402
from circuitlab.models import hf_checkpoint, loading  # noqa: E402
from circuitlab.run import run_experiment  # noqa: E402
from tests import hf_fixtures  # noqa: E402
from tests.conftest import ioi_pairs  # noqa: E402

PRESETS = {  # method: preset (IOI prompts, so the fixtures' tokenizer has every word)
    "activation_patching": ["+experiment=ioi_patching"],
    "attribution_patching": ["+experiment=ioi_attribution"],
    "path_patching": ["+experiment=ioi_path_to_name_movers"],
    "das": ["+experiment=ioi_position", "method.epochs=1"],
    "vanilla": ["+experiment=ioi_name_vanilla"],
    "direct_attribution": ["+experiment=ioi_dla"],
    "ablation": ["+experiment=toy_resample_scales"],
}
QUIET = ["progress=false", "figures=false", "task.n_prompts=16"]


def logit_gap(path: Path, model) -> float:
    pairs = ioi_pairs(model, n_prompts=8)
    rows = torch.arange(pairs.n_pairs)
    theirs = hf_fixtures.hf_model(path)(pairs.clean_tokens).logits[rows, pairs.final_positions]
    ours = model(pairs.clean_tokens)[rows, pairs.final_positions]
    if not (model.cfg.output_logits_soft_cap or 0) > 0:  # centre_unembed shifts each row by a constant
        theirs, ours = theirs - theirs.mean(-1, keepdim=True), ours - ours.mean(-1, keepdim=True)
    return (ours - theirs).abs().max().item()


def patching_gap(model) -> float:
    pairs = ioi_pairs(model, n_prompts=8)
    n_layers, width = model.cfg.n_layers, pairs.width
    ours = patch_sweep(model, pairs, enumerate_locations(["resid_pre"], list(range(n_layers)), list(range(width))), progress=False)
    _, cache = model.run_with_cache(pairs.clean_tokens)
    metric = lambda logits: logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()  # noqa: E731
    theirs = patching.get_act_patch_resid_pre(model, pairs.corrupted_tokens, cache, metric)
    return (ours.logit_diff.view(n_layers, width) - theirs).abs().max().item()


def presets_run(path: Path, workdir: Path) -> dict[str, str]:
    out = {}
    for method, preset in PRESETS.items():
        try:
            cfg = compose.compose_config([*preset, *QUIET, "model=local", f"model.path={path}"])
            run_experiment(cfg, workdir / method)
            out[method] = "ran"
        except CircuitlabError as err:
            out[method] = f"refused: {err}"
        except Exception as err:  # noqa: BLE001  a report, not a test: say what broke
            out[method] = f"FAILED: {type(err).__name__}: {err}"
    return out


def main(archs: list[str]) -> int:
    torch.set_grad_enabled(False)
    defaults = ModelConfig()
    processing = {flag: getattr(defaults, flag) for flag in loading.PROCESSING_FLAGS}
    print("| architecture | max abs logit diff vs transformers | max abs diff vs TL patching | methods run | seconds |")
    print("| --- | --- | --- | --- | --- |")
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        for arch in archs:
            start = time.perf_counter()
            path = hf_fixtures.build(arch, Path(tmp) / arch)
            model = hf_checkpoint.load_checkpoint(path, processing=processing)
            with torch.enable_grad():  # attribution patching needs gradients
                runs = presets_run(path, Path(tmp) / f"{arch}-runs")
            ran = [m for m, r in runs.items() if r == "ran"]
            failed |= len(ran) < len(runs)
            notes = "; ".join(f"{m}: {r}" for m, r in runs.items() if r != "ran")
            methods = f"{len(ran)}/{len(runs)}" + (f" ({notes})" if notes else " (all)")
            print(f"| {model.cfg.original_architecture} | {logit_gap(path, model):.1e} | {patching_gap(model):.1e} | {methods} | {time.perf_counter() - start:.0f} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or list(hf_fixtures.ARCHITECTURES)))
