"""Activation patching: circuitlab against TransformerLens' `patching` module, side by side in one process.

GPT-2-small-shaped model with random weights (no download), 8 prompts x 18 tokens, layer x position sweeps.
Asserts equal results (1e-4), prints a table of seconds and ratios and writes it to bench/results/.

    python bench/patching.py                      # resid_pre, attn_out, mlp_out (TransformerLens: ~100 s each on 2 CPU cores)
    python bench/patching.py --streams resid_pre --layers 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig, patching

from circuitlab.locations import enumerate_locations
from circuitlab.methods.activation_patching import patch_sweep
from circuitlab.metrics import logit_diff
from circuitlab.results import write_text
from circuitlab.tasks.base import PromptPairs

TL_FUNCTIONS = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "resid_mid": patching.get_act_patch_resid_mid,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
}


def gpt2_small_shaped(n_layers: int) -> HookedTransformer:
    cfg = HookedTransformerConfig(
        n_layers=n_layers, d_model=768, n_heads=12, d_head=64, d_mlp=3072, n_ctx=1024, d_vocab=50257,
        act_fn="gelu_new", normalization_type="LN", seed=0, device="cpu",
    )
    model = HookedTransformer(cfg)
    model.eval()
    return model


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", nargs="+", default=["resid_pre", "attn_out", "mlp_out"], choices=list(TL_FUNCTIONS))
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=18)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = gpt2_small_shaped(args.layers)
    pairs = random_pairs(args.prompts, args.tokens, model.cfg.d_vocab)
    _, clean_cache = model.run_with_cache(pairs.clean_tokens)

    def metric(logits):
        return logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()

    rows = []
    for stream in args.streams:
        locations = enumerate_locations([stream], list(range(args.layers)), list(range(args.tokens)))
        start = time.perf_counter()
        ours = patch_sweep(model, pairs, locations, progress=False).logit_diff.view(args.layers, args.tokens)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theirs = TL_FUNCTIONS[stream](model, pairs.corrupted_tokens, clean_cache, metric)
        theirs_s = time.perf_counter() - start
        max_diff = (ours - theirs).abs().max().item()
        assert max_diff < 1e-4, f"{stream}: results differ by {max_diff}"
        rows.append((f"{stream} layer x position ({args.layers}x{args.tokens})", theirs_s, ours_s, max_diff))
        print(f"{rows[-1][0]}: transformer_lens {theirs_s:.2f} s, circuitlab {ours_s:.2f} s, {theirs_s / ours_s:.1f}x", flush=True)

    lines = [
        f"# Activation patching, GPT-2-small-shaped random model ({args.layers} layers), {args.prompts} prompts x {args.tokens} tokens, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "",
        "| sweep | transformer_lens.patching (s) | circuitlab (s) | speed-up | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [f"| {name} | {tl:.2f} | {cl:.2f} | {tl / cl:.1f}x | {diff:.1e} |" for name, tl, cl, diff in rows]
    table = "\n".join(lines) + "\n"
    print("\n" + table)
    out = Path(__file__).parent / "results" / "patching.md"
    write_text(out, table)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
