"""Post-norm models' edges: circuitlab's definition against EAP-IG's, on a named model (default Gemma 3 270M).

circuitlab (edges/hooks.py): a head's sender output is its share of the normalised attention output of the same run,
so patching head h -> receiver r adds share_h(corrupted run) - share_h(clean run) to r's input. EAP-IG's circuit
evaluation (github hannamw/EAP-IG, src/eap/evaluate.py) instead adds, per receiver, ln1_post(clean attention output
before the norm with head h's result swapped for its corrupted one) - the clean attention output; its attribution
(src/eap/utils.py) multiplies the receiver's gradient by the head's result difference before the norm. For head ->
receiver edges (the best by |EAP| and as many at random) it prints: the two definitions' exact single-edge effects
(m(patched) - m(clean), two forwards each for EAP-IG's, hooks written here), how far apart they are, and how our EAP
and EAP-IG's attribution arithmetic correlate with each. No timing: a comparison of definitions, not of speed.

    OMP_NUM_THREADS=1 CIRCUITLAB_CACHE=... python bench/post_norm_edges.py                 # ~5 min on 2 cores
    python bench/post_norm_edges.py --model gemma3-270m --prompts 8 --edges 25
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent.parent))
from circuitlab import cli  # noqa: E402
from circuitlab.config import IOITaskConfig  # noqa: E402
from circuitlab.edges import attribution  # noqa: E402
from circuitlab.edges import hooks as edge_hooks  # noqa: E402
from circuitlab.edges.graph import EdgeGraph  # noqa: E402
from circuitlab.edges.patching import patch_edges  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402
from circuitlab.models import loading  # noqa: E402
from circuitlab.plan import special_ids  # noqa: E402
from circuitlab.tasks import ioi  # noqa: E402
from tests.edge_reference import FLAGS, exposed, receiver_hook, restore  # noqa: E402


def eap_ig_patch(model, pairs, graph: EdgeGraph, edge: tuple[int, int], clean: dict, corrupted: dict) -> float:
    """The mean logit difference with head -> receiver `edge` patched as EAP-IG's evaluation does (one clean forward,
    the renormalised difference added at the receiver's input; `clean` / `corrupted`: hook_result and hook_attn_out)."""
    sender, receiver = edge
    layer = graph.sender_layer(sender)
    head = sender - graph.head_sender(layer, 0)
    block = model.blocks[layer]
    norm = block.ln1_post if model.cfg.use_normalization_before_and_after else block.ln1
    results = clean[f"blocks.{layer}.attn.hook_result"]
    swapped = results.sum(2) + block.attn.b_O + corrupted[f"blocks.{layer}.attn.hook_result"][:, :, head] - results[:, :, head]
    delta = norm(swapped) - clean[f"blocks.{layer}.hook_attn_out"]
    hook, receiving = receiver_hook(graph.receivers[receiver], model.cfg.n_layers)

    def add(activation, hook):
        activation = activation.clone()
        if receiving is None:
            activation += delta
        else:
            activation[:, :, receiving] += delta
        return activation

    rows = torch.arange(pairs.n_pairs)
    logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(hook, add)])
    return logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().item()


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([x, y]))[0, 1])


def ranks(x: torch.Tensor) -> torch.Tensor:
    return x.argsort().argsort().float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gemma3-270m", help="a named model config with post-norms")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--edges", type=int, default=25, help="head -> receiver edges: this many best by |EAP|, as many at random")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    cfg = cli.compose_config([f"model={args.model}"]).model
    model = loading.load_model(cfg, device="cpu")
    if not edge_hooks.post_normed(model.cfg):
        raise SystemExit(f"{args.model} has no norm after attention: nothing to compare")
    pairs = ioi.build_pairs(IOITaskConfig(n_prompts=args.prompts, templates="when"), model.tokenizer, *special_ids(model.tokenizer, cfg.bos), 0)
    graph = EdgeGraph.of(model.cfg)
    scores = attribution.edge_scores(model, pairs, graph, "patching")
    heads = [(s, r) for s, r in graph.edges if s != 0 and s != graph.mlp_sender(graph.sender_layer(s))]
    ranked = sorted(heads, key=lambda e: -abs(float(scores[e])))
    edges = ranked[:args.edges] + random.Random(0).sample(ranked[args.edges:], args.edges)
    ours, clean_ld = patch_edges(model, pairs, graph, "patching", edges)
    before = {flag: getattr(model.cfg, flag) for flag in FLAGS}
    exposed(model)
    try:
        _, corrupted = model.run_with_cache(pairs.corrupted_tokens, names_filter=lambda n: n.endswith("attn.hook_result"))
        _, clean = model.run_with_cache(pairs.clean_tokens, names_filter=lambda n: n.endswith(("attn.hook_result", "hook_attn_out")))
        theirs = torch.tensor([eap_ig_patch(model, pairs, graph, edge, clean, corrupted) for edge in edges])
    finally:
        restore(model, before)
    norm = edge_hooks.attention_output_norm
    edge_hooks.attention_output_norm = lambda model, layer: None  # EAP-IG's attribution: result differences before the norm
    try:
        raw = attribution.edge_scores(model, pairs, graph, "patching")
    finally:
        edge_hooks.attention_output_norm = norm
    ours_effect, theirs_effect = ours - clean_ld, theirs - clean_ld
    eap = -torch.tensor([float(scores[e]) for e in edges])
    eap_raw = -torch.tensor([float(raw[e]) for e in edges])
    gap = (ours_effect - theirs_effect).abs()
    print(f"{args.model}, {pairs.n_pairs} IOI pairs, {len(edges)} head -> receiver edges ({args.edges} best by |EAP|, {args.edges} at random)")
    print(f"exact effects, circuitlab's shares: |max| {ours_effect.abs().max():.3f}, mean {ours_effect.abs().mean():.3f}; "
          f"EAP-IG's renormalisation: |max| {theirs_effect.abs().max():.3f}, mean {theirs_effect.abs().mean():.3f}")
    print(f"definitions apart: mean {gap.mean():.4f}, max {gap.max():.4f}; Pearson {correlation(ours_effect, theirs_effect):.3f}, "
          f"Spearman {correlation(ranks(ours_effect), ranks(theirs_effect)):.3f}")
    print(f"circuitlab's EAP vs exact: Pearson {correlation(eap, ours_effect):.3f} (ours), {correlation(eap, theirs_effect):.3f} (EAP-IG's)")
    print(f"EAP-IG's attribution arithmetic vs exact: Pearson {correlation(eap_raw, ours_effect):.3f} (ours), "
          f"{correlation(eap_raw, theirs_effect):.3f} (EAP-IG's); median |estimate / EAP-IG's effect| {float((eap_raw / theirs_effect).abs().median()):.3f}")


if __name__ == "__main__":
    main()
