"""Activation patching: circuitlab against TransformerLens' `patching` module, side by side in one process.

GPT-2-small-shaped model with random weights (no download), 8 prompts x 18 tokens (the corrupted prompts differ
at positions 2, 5 and 11): resid_pre / attn_out / mlp_out layer x position sweeps, and per-head output (z) layer x
head (all positions) and layer x head x position sweeps. Asserts equal results (1e-4), prints a table of seconds
and ratios and writes it to bench/results/patching.md.

    python bench/patching.py                  # every row; TransformerLens alone takes ~35 min on 2 CPU cores
    python bench/patching.py --rows resid_pre z_all_pos --layers 4
    python bench/patching.py --device cuda --json out.json  # on a GPU (results files are written for CPU runs only)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig, patching

from circuitlab.locations import enumerate_locations
from circuitlab.engine.sweep import patch_sweep
from circuitlab.metrics import logit_diff
from circuitlab.results import write_text
from circuitlab.tasks.base import PromptPairs

# row -> (TransformerLens function, our stream, heads, positions ("every" or "all"), TransformerLens axes order)
ROWS = {
    "resid_pre": (patching.get_act_patch_resid_pre, "resid_pre", None, "every", "layer pos"),
    "attn_out": (patching.get_act_patch_attn_out, "attn_out", None, "every", "layer pos"),
    "mlp_out": (patching.get_act_patch_mlp_out, "mlp_out", None, "every", "layer pos"),
    "z_all_pos": (patching.get_act_patch_attn_head_out_all_pos, "z", "each", "all", "layer head"),
    "z_by_pos": (patching.get_act_patch_attn_head_out_by_pos, "z", "each", "every", "layer pos head"),
}


def gpt2_small_shaped(n_layers: int, device: str = "cpu") -> HookedTransformer:
    """Initialised on the CPU (the same weights whatever the device), then moved to `device`."""
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", seed=0, device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model if device == "cpu" else model.to(device)


def on_device(pairs: PromptPairs, device: str) -> PromptPairs:
    """The pairs with every tensor moved to `device`."""
    tensors = {f.name: getattr(pairs, f.name) for f in dataclasses.fields(pairs) if isinstance(getattr(pairs, f.name), torch.Tensor)}
    return dataclasses.replace(pairs, **{name: t.to(device) for name, t in tensors.items()})


def random_pairs(n_prompts: int, width: int, d_vocab: int) -> PromptPairs:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, d_vocab, (n_prompts, width), generator=g)
    corrupted = clean.clone()
    corrupted[:, [2, 5, 11]] = torch.randint(0, d_vocab, (n_prompts, 3), generator=g)
    return PromptPairs(
        clean_tokens=clean, corrupted_tokens=corrupted,
        answer_tokens=torch.randint(0, d_vocab, (n_prompts,), generator=g),
        wrong_tokens=torch.randint(0, d_vocab, (n_prompts,), generator=g),
        lengths=torch.full((n_prompts,), width), named_positions={},
        clean_texts=[""] * n_prompts, corrupted_texts=[""] * n_prompts, first_prompt_tokens=[],
    )


def run_ours(model, pairs, stream, heads, positions, n_layers, width) -> torch.Tensor:
    """Our sweep, shaped like TransformerLens' output: [layer, pos], [layer, head] or [layer, pos, head]."""
    position_specs = list(range(width)) if positions == "every" else ["all"]
    locations = enumerate_locations([stream], list(range(n_layers)), position_specs, heads=heads, shape=model.cfg)
    values = patch_sweep(model, pairs, locations, progress=False).logit_diff
    if heads is None:
        return values.view(n_layers, width)
    grid = values.view(n_layers, model.cfg.n_heads, len(position_specs))
    return grid[..., 0] if positions == "all" else grid.permute(0, 2, 1)


def model_and_prompts(parser: argparse.ArgumentParser):
    """Parse the shared --layers / --prompts / --tokens / --device / --json; returns (args, the random model, its
    prompt pairs), both on the device."""
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=18, help="at least 12 (the corrupted positions are 2, 5 and 11)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N")
    parser.add_argument("--json", type=Path, help="also write the rows here (name, points, peer_s, circuitlab_s, max_abs_diff)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = gpt2_small_shaped(args.layers, args.device)
    pairs = random_pairs(args.prompts, args.tokens, model.cfg.d_vocab)
    if args.device != "cpu":
        tensors = {f.name: getattr(pairs, f.name) for f in dataclasses.fields(pairs) if isinstance(getattr(pairs, f.name), torch.Tensor)}
        pairs = dataclasses.replace(pairs, **{name: t.to(args.device) for name, t in tensors.items()})
        model(pairs.clean_tokens)  # warm-up: CUDA context, cuBLAS handles, first kernel loads
    return args, model, pairs


def timed(function, device: str):
    """(function(), seconds); on a GPU, the queued kernels are waited for before the clock stops."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    out = function()
    sync()
    return out, time.perf_counter() - start


def setting_line(args) -> str:
    """The run's setting, as the table titles give it (the CPU wording unchanged for the recorded files)."""
    where = f"{torch.get_num_threads()} threads"
    if args.device.startswith("cuda"):
        where = f"{args.device} ({torch.cuda.get_device_name(torch.device(args.device))})"
    return f"{args.layers} layers, {args.prompts} prompts x {args.tokens} tokens, torch {torch.__version__}, {where}"


def recorded_setting(args) -> bool:
    """Only the default run (CPU, 12 layers, 8 prompts x 18 tokens) writes bench/results/."""
    return (args.layers, args.prompts, args.tokens, args.device) == (12, 8, 18, "cpu")


def finish(args, table, atol: float = 1e-4) -> None:
    """Write --json if asked (one object per row: name, points, peer_s, circuitlab_s, max_abs_diff), then fail if
    any row's results differ by more than `atol`, before anything is recorded under bench/results/."""
    if args.json:
        rows = [dict(zip(("name", "points", "peer_s", "circuitlab_s", "max_abs_diff"), row)) for row in table]
        args.json.write_text(json.dumps({"setting": setting_line(args), "rows": rows}, indent=2) + "\n")
    for name, *_, max_diff in table:
        assert max_diff < atol, f"{name}: results differ by {max_diff}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    args, model, pairs = model_and_prompts(parser)
    _, clean_cache = model.run_with_cache(pairs.clean_tokens)

    def metric(logits):
        return logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()

    table = []
    for row in args.rows:
        tl_function, stream, heads, positions, axes = ROWS[row]
        ours, ours_s = timed(lambda: run_ours(model, pairs, stream, heads, positions, args.layers, args.tokens), args.device)
        theirs, theirs_s = timed(lambda: tl_function(model, pairs.corrupted_tokens, clean_cache, metric), args.device)
        max_diff = (ours - theirs).abs().max().item()
        name = f"{stream} {axes.replace(' ', ' x ')}" + (" (all positions)" if positions == "all" else "")
        table.append((name, tuple(theirs.shape), theirs_s, ours_s, max_diff))
        print(f"{name} {tuple(theirs.shape)}: transformer_lens {theirs_s:.1f} s, circuitlab {ours_s:.1f} s, {theirs_s / ours_s:.1f}x", flush=True)

    setting = setting_line(args)
    print("\n" + render(table, setting))
    finish(args, table)
    if recorded_setting(args):
        record(table, setting)


def markdown_table(title: str, header: list[str], rows: list[list[str]], left_columns: int = 2) -> str:
    """A titled markdown table; the first `left_columns` columns left-aligned, the others right-aligned."""
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---" if i < left_columns else "---:" for i in range(len(header))) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render(table, setting: str) -> str:
    header = ["sweep", "points", "transformer_lens.patching (s)", "circuitlab (s)", "speed-up", "max abs diff"]
    rows = [[name, "x".join(map(str, shape)), f"{tl:.1f}", f"{cl:.1f}", f"{tl / cl:.1f}x", f"{diff:.1e}"] for name, shape, tl, cl, diff in table]
    return markdown_table(f"Activation patching, GPT-2-small-shaped random model ({setting})", header, rows)


def record(table, setting: str) -> None:
    """Merge these rows into bench/results/patching.json (by sweep name) and redraw patching.md from all rows,
    so that `--rows` reruns update their own rows only."""
    import json

    results = Path(__file__).parent / "results"
    store = results / "patching.json"
    rows = json.loads(store.read_text()) if store.exists() else {}
    rows.update({name: [list(shape), tl, cl, diff] for name, shape, tl, cl, diff in table})
    write_text(store, json.dumps(rows, indent=2) + "\n")
    merged = [(name, tuple(shape), tl, cl, diff) for name, (shape, tl, cl, diff) in rows.items()]
    write_text(results / "patching.md", render(merged, setting))
    print(f"written to {results / 'patching.md'}")


if __name__ == "__main__":
    main()
