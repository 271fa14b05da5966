"""Speed at a real model's shape: circuitlab against what a researcher writes with TransformerLens, side by side.

A Llama-shaped model with random weights: SmolLM2-135M's config (30 layers, d_model 576, 9 query / 3 key-value
heads, d_mlp 1536, 49152-token vocabulary, rope theta 100000, tied embeddings), built by `transformers`
(LlamaForCausalLM(LlamaConfig(...)), save_pretrained to a temp dir with toy-ioi's tokenizer files) and loaded twice
from those weights: by circuitlab's `model=local` route, and by TransformerLens' own conversion
(get_pretrained_model_config / get_pretrained_state_dict). Prompts as in bench/patching.py (random tokens; the
corrupted prompts differ at positions 2, 5 and 11). Rows:
- activation patching, layer x position (resid_pre, attn_out, mlp_out): `patch_sweep` against the hand-batched
  loop a competent researcher writes: per layer ONE forward holding every position's patched copy (positions x
  prompts rows), started at that layer from the cached residual stream (`start_at_layer`), only the last
  position unembedded;
- head patching, layer x head (z, all positions): the same loop, one copy per head;
- exact edge patching of a seeded sample of edges: `patch_edges` against two forwards per edge
  (tests/edge_reference.py), per edge; the reference runs on the first `--reference-edges` edges of the sample
  (it takes seconds per edge), and the results are compared on those.
Results are asserted equal (1e-4). Prints a table naming torch's thread count and the load average, and writes it to
bench/results/llama_shape.md (default setting, CPU only).

    python bench/llama_shape.py                        # resid_pre, z, edges: a few minutes on 2 quiet cores
    python bench/llama_shape.py --rows resid_pre attn_out mlp_out z edges
    python bench/llama_shape.py --rows edges --prompts 32 --tokens 15 --differ-at 12   # IOI's shape: S2 near the end
    OMP_NUM_THREADS=1 python bench/llama_shape.py      # on a shared machine
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from patching import markdown_table, random_pairs  # noqa: E402

from circuitlab.edges.graph import EdgeGraph  # noqa: E402
from circuitlab.edges.patching import patch_edges  # noqa: E402
from circuitlab.engine.sweep import first_difference, patch_sweep  # noqa: E402
from circuitlab.locations import enumerate_locations  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402
from circuitlab.results import write_text  # noqa: E402
from tests import edge_reference  # noqa: E402

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
               tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0)
# row -> (stream, hook of the patched activation, what one copy patches)
PATCHING_ROWS = {"resid_pre": ("resid_pre", "hook_resid_pre", "position"), "attn_out": ("attn_out", "hook_attn_out", "position"),
                 "mlp_out": ("mlp_out", "hook_mlp_out", "position"), "z": ("z", "attn.hook_z", "head")}
ROWS = (*PATCHING_ROWS, "edges")
DEFAULT_ROWS = ("resid_pre", "z", "edges")
DEFAULTS = dict(prompts=8, tokens=18, layer_step=5, edges=300, reference_edges=8, differ_at=None, device="cpu", rows=list(DEFAULT_ROWS))


def write_checkpoint(directory: Path, seed: int = 0) -> None:
    """SmolLM2-135M's config with random weights, as `save_pretrained` writes it, and toy-ioi's tokenizer files."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from circuitlab.models.loading import EMBEDDED_DIR

    torch.manual_seed(seed)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2)).eval().save_pretrained(str(directory))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(EMBEDDED_DIR / "toy-ioi" / name, directory / name)


def load_both(directory: Path, device: str):
    """(circuitlab's model through `model=local`, TransformerLens' own conversion of the same weights)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config, get_pretrained_state_dict
    from transformers import AutoModelForCausalLM

    from circuitlab.cli import compose_config
    from circuitlab.models import loading

    cfg = compose_config(["model=local", f"model.path={directory}"])
    ours = loading.load_model(cfg.model, device)
    tl_cfg = get_pretrained_model_config(str(directory), device=device, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True, dtype=torch.float32)
    theirs = HookedTransformer(tl_cfg)
    theirs.load_and_process_state_dict(get_pretrained_state_dict(str(directory), tl_cfg, hf_model=hf_model))
    del hf_model
    return ours, theirs.eval()


def final_logit_diff(model, resid, pairs, copies: int) -> torch.Tensor:
    """Mean logit difference per copy, unembedding the last position only (prompts of one length)."""
    logits = model.unembed(model.ln_final(resid[:, -1:]))[:, 0]
    return logit_diff(logits.view(copies, pairs.n_pairs, -1), pairs.answer_tokens, pairs.wrong_tokens).mean(1)


def hand_batched(model, pairs, row: str, layers: list[int]) -> torch.Tensor:
    """The researcher's loop: denoising (clean source into the corrupted run), per layer one forward of every
    position's (or head's) copy from that layer on. [layer, position] or [layer, head]."""
    _, hook, per = PATCHING_ROWS[row]
    names = {f"blocks.{layer}.{name}" for layer in layers for name in (hook, "hook_resid_pre")}
    _, clean = model.run_with_cache(pairs.clean_tokens, names_filter=lambda n: n in names)
    _, corrupted = model.run_with_cache(pairs.corrupted_tokens, names_filter=lambda n: n in names)
    n = pairs.n_pairs
    copies = model.cfg.n_heads if per == "head" else pairs.width
    out = []
    for layer in layers:
        source = clean[f"blocks.{layer}.{hook}"]

        def patch(activation, hook):
            activation = activation.clone()
            for c in range(copies):
                if per == "head":
                    activation[c * n:(c + 1) * n, :, c] = source[:, :, c]
                else:
                    activation[c * n:(c + 1) * n, c] = source[:, c]
            return activation

        start = corrupted[f"blocks.{layer}.hook_resid_pre"].repeat(copies, 1, 1)
        with model.hooks(fwd_hooks=[(f"blocks.{layer}.{hook}", patch)]):
            resid = model(start, start_at_layer=layer, stop_at_layer=model.cfg.n_layers)
        out.append(final_logit_diff(model, resid, pairs, copies))
    return torch.stack(out)


def ours_patching(model, pairs, row: str, layers: list[int]) -> torch.Tensor:
    stream, _, per = PATCHING_ROWS[row]
    if per == "head":
        locations = enumerate_locations([stream], layers, ["all"], heads="each", shape=model.cfg)
        return patch_sweep(model, pairs, locations, progress=False).logit_diff.view(len(layers), -1)
    locations = enumerate_locations([stream], layers, list(range(pairs.width)), shape=model.cfg)
    return patch_sweep(model, pairs, locations, progress=False).logit_diff.view(len(layers), pairs.width)


def timed(function):
    start = time.perf_counter()
    out = function()
    return out, time.perf_counter() - start


def edge_row(ours_model, tl_model, pairs, n_edges: int, n_reference: int) -> list[tuple]:
    """Two table rows: exact edge patching of a seeded sample against the two-forward reference (checked on its
    first `n_reference` edges), and against two plain forwards (no hooks: what any two-forward reference costs at
    least). Times in ms per edge."""
    graph = EdgeGraph.of(ours_model.cfg)
    generator = torch.Generator().manual_seed(0)
    picked = torch.randperm(graph.n_edges, generator=generator)[:n_edges]
    sample = [graph.edges[i] for i in picked.sort().values.tolist()]
    checked = [graph.edges[i] for i in picked[:n_reference].tolist()]  # a uniform subset of the sample
    (values, _), ours_s = timed(lambda: patch_edges(ours_model, pairs, graph, "patching", sample))
    reference, ref_s = timed(lambda: [edge_reference.patch_edge(tl_model, pairs, graph.edge_name(s, r)) for s, r in checked])
    _, plain_s = timed(lambda: (tl_model(pairs.corrupted_tokens), tl_model(pairs.clean_tokens)))
    mine = dict(zip(sample, values.tolist()))
    diff = max(abs(mine[edge] - value) for edge, value in zip(checked, reference))
    # block-rows: two full forwards, against the positions from the first difference through the blocks from the receiver's on
    d, n, w, layers = first_difference(pairs), pairs.n_pairs, pairs.width, graph.n_layers
    work = 2 * n * w * layers / (sum(n * (w - d) * (layers - graph.receiver_layer(r)) for _, r in sample) / len(sample))
    ours_ms = 1000 * ours_s / len(sample)
    where = f"{n_edges} of {graph.n_edges} edges"
    return [(f"exact edge patching vs two forwards per edge, split q / k / v hooks (tests/edge_reference.py; {where}, reference "
             f"on {n_reference}), ms per edge", 1000 * ref_s / len(checked), ours_ms, work, diff, 20),
            (f"exact edge patching vs two plain forwards per edge (no hooks: the least a two-forward reference costs), ms per edge",
             1000 * plain_s, ours_ms, work, None, None)]


def patching_work(row: str, layers: list[int], pairs, n_layers: int, n_heads: int) -> float:
    """Block-rows the hand-batched loop computes per block-row of ours, ideally: the loop runs every position of
    every copy from the patched layer on; ours only positions from each point's first patched one (and none for a
    position before the first difference)."""
    d, w = first_difference(pairs), pairs.width
    if PATCHING_ROWS[row][2] == "head":
        return sum(n_heads * w * (n_layers - l) for l in layers) / sum(n_heads * (w - d) * (n_layers - l) for l in layers)
    return sum(w * w * (n_layers - l) for l in layers) / sum((w - p) * (n_layers - l) for l in layers for p in range(d, w))


def machine() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=list(ROWS),
                        help="attn_out and mlp_out patch like resid_pre (one copy per position); not run by default")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=18, help="at least 12 (the corrupted positions are 2, 5 and 11)")
    parser.add_argument("--layer-step", type=int, default=5, help="sweep every n-th layer of the 30 (default 5: layers 0, 5, ..., 25)")
    parser.add_argument("--edges", type=int, default=300, help="edges in the sample circuitlab patches")
    parser.add_argument("--reference-edges", type=int, default=8, help="of them, how many the two-forward reference patches")
    parser.add_argument("--differ-at", type=int, nargs="+", help="the corrupted prompts differ at these positions only (IOI: one "
                        "name near the end, e.g. --tokens 15 --differ-at 12) instead of 2, 5 and 11")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory(prefix="real-shape-") as tmp:
        directory = Path(tmp) / "random-135m"  # no architecture name in the path: TransformerLens branches on it
        directory.mkdir()
        write_checkpoint(directory)
        ours_model, tl_model = load_both(directory, args.device)
    pairs = random_pairs(args.prompts, args.tokens, ours_model.cfg.d_vocab)
    if args.differ_at:
        pairs.corrupted_tokens[:] = pairs.clean_tokens
        pairs.corrupted_tokens[:, args.differ_at] = (pairs.clean_tokens[:, args.differ_at] + 1 + torch.arange(args.prompts)[:, None]) % ours_model.cfg.d_vocab
    check = (ours_model(pairs.clean_tokens) - tl_model(pairs.clean_tokens)).abs().max().item()
    print(f"loaded twice, logits agree to {check:.1e}; {machine()}", flush=True)
    layers = list(range(0, ours_model.cfg.n_layers, args.layer_step))
    table = []
    for row in args.rows:
        if row == "edges":
            table += edge_row(ours_model, tl_model, pairs, args.edges, args.reference_edges)
        else:
            ours, ours_s = timed(lambda: ours_patching(ours_model, pairs, row, layers))
            theirs, theirs_s = timed(lambda: hand_batched(tl_model, pairs, row, layers))
            shape = "x".join(map(str, theirs.shape))
            what = "layer x head (all positions)" if PATCHING_ROWS[row][2] == "head" else "layer x position"
            work = patching_work(row, layers, pairs, ours_model.cfg.n_layers, ours_model.cfg.n_heads)
            table.append((f"{PATCHING_ROWS[row][0]} {what} ({shape}) vs the hand-batched loop, s", theirs_s, ours_s, work,
                          (ours - theirs).abs().max().item(), 2))
        for name, peer, mine, work, diff, _ in table[-2 if row == "edges" else -1:]:
            print(f"{name}: peer {peer:.2f}, circuitlab {mine:.2f}, {peer / mine:.1f}x (work {work:.1f}x), max diff {diff}", flush=True)
    setting = (f"SmolLM2-135M-shaped random Llama (30 layers, sweeps over layers {layers[0]}..{layers[-1]} step {args.layer_step}), "
               f"{args.prompts} prompts x {args.tokens} tokens differing from position {first_difference(pairs)}, {machine()}")
    header = ["row", "peer", "circuitlab", "speed-up (target)", "work ratio", "max abs diff"]
    rows = [[name, f"{peer:.2f}", f"{mine:.2f}", f"{peer / mine:.1f}x" + (f" (>= {target}x)" if target else ""), f"{work:.1f}x",
             "-" if diff is None else f"{diff:.1e}"] for name, peer, mine, work, diff, target in table]
    text = markdown_table(f"Speed at a real model's shape ({setting})", header, rows, left_columns=1)
    text += ("\nwork ratio: block-rows (a prompt position through one block) the peer computes per block-row of circuitlab's "
             "(each point from its own first patched position; chunking and partial blocks left out): the speed-up that fewer "
             "FLOPs alone would give.\n")
    print("\n" + text)
    for name, *_, diff, _ in table:
        assert diff is None or diff < 1e-4, f"{name}: results differ by {diff}"
    if {key: getattr(args, key) for key in DEFAULTS} == DEFAULTS:
        out = Path(__file__).parent / "results" / "llama_shape.md"
        write_text(out, text)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
