"""EAP-IG over activations (`method=eap_ig method.ig_over=activations`): circuitlab against a plain reference, side
by side in one process.

The reference is EAP-IG's own structure (github hannamw/EAP-IG, src/eap/attribute.py, `get_scores_ig_activations`),
written here with TransformerLens' hooks: the model with split q / k / v inputs, per-head results and MLP inputs
(`use_split_qkv_input`, `use_attn_result`, `use_hook_mlp_in`), weights frozen (that code leaves them
differentiable, which adds the embedding's and unembedding's 50k-row weight gradients to every backward: the
stronger peer is timed); for every
component (the input, each layer's heads, each MLP) and step, one forward whose component output is replaced by its
interpolation and one backward whose receiver-input gradients are multiplied into the scores of that component's
senders as they arrive (backward hooks, one einsum per receiver group). circuitlab runs the model's own forward
(no split copies of the residual stream) and recovers the same gradients (circuitlab/edges/attribution.py).

GPT-2-small-shaped model with random weights (bench/patching.py), 8 prompts x 18 tokens by default, 1 step (25
runs of the 12-layer model: the reference takes minutes on CPU). Measured on the loaded shared 2 cores, 1 thread:
2 layers, 2 steps: 38.6 s vs 3.6 s (10.7x, max |diff| 8.4e-7); 4 layers, 2 steps: 87.4 s vs 20.4 s (4.3x, 4.1e-7;
ours alone 7.8 s when the machine was quieter).

    python bench/eap_ig_activations.py
    python bench/eap_ig_activations.py --steps 5 --layers 4 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from patching import model_and_prompts, setting_line, timed  # noqa: E402
from circuitlab.edges import attribution  # noqa: E402
from circuitlab.edges.graph import EdgeGraph  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402
from tests.edge_reference import FLAGS, exposed, restore  # noqa: E402


def _component_outputs(model, tokens, names):
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return {n: cache[n].clone() for n in names}


def reference_scores(model, pairs, graph: EdgeGraph, steps: int) -> torch.Tensor:
    """The (sender, receiver) scores of EAP-IG over activations (each component's runs scoring its own senders),
    averaged over prompts, 0 where there is no edge."""
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    trainable = [(p, p.requires_grad) for p in model.parameters()]
    exposed(model)
    for p, _ in trainable:
        p.requires_grad_(False)  # only the replaced output and what it feeds carry gradients
    try:
        n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
        parts = [("blocks.0.hook_resid_pre", 0, 1)]
        for layer in range(n_layers):
            parts.append((f"blocks.{layer}.attn.hook_result", graph.head_sender(layer, 0), graph.head_sender(layer, 0) + n_heads))
            if graph.has_mlp:
                parts.append((f"blocks.{layer}.hook_mlp_out", graph.mlp_sender(layer), graph.mlp_sender(layer) + 1))
        names = {name for name, _, _ in parts}
        clean, source = _component_outputs(model, pairs.clean_tokens, names), _component_outputs(model, pairs.corrupted_tokens, names)
        diff = torch.cat([(source[n] - clean[n]).reshape(*clean[n].shape[:2], -1, clean[n].shape[-1]) for n, _, _ in parts], 2)
        scores = torch.zeros(len(graph.senders), len(graph.receivers))
        rows = torch.arange(pairs.n_pairs, device=pairs.clean_tokens.device)
        for name, first, last in parts:
            block = diff[:, :, first:last]
            for k in range(1, steps + 1):
                alpha = k / steps

                def replace(activation, hook, name=name, alpha=alpha):
                    return (alpha * clean[name] + (1 - alpha) * source[name]).requires_grad_(True)

                def receiver(index):
                    def hook(activation, hook):
                        def on_grad(grad):
                            grad = grad if grad.ndim == 4 else grad[:, :, None]
                            scores[first:last, index] += torch.einsum("bpsd,bphd->sh", block, grad).cpu()
                        if activation.requires_grad:  # receivers before the replaced output get none
                            activation.register_hook(on_grad)
                        return activation
                    return hook

                hooks = [(name, replace)]
                for layer in range(n_layers):
                    for x in "qkv":
                        start = graph.head_receiver(layer, x, 0)
                        hooks.append((f"blocks.{layer}.hook_{x}_input", receiver(slice(start, start + n_heads))))
                    if graph.has_mlp:
                        hooks.append((f"blocks.{layer}.hook_mlp_in", receiver(slice(graph.mlp_receiver(layer), graph.mlp_receiver(layer) + 1))))
                hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", receiver(slice(graph.logits_receiver, graph.logits_receiver + 1))))
                with torch.enable_grad():
                    logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=hooks)
                    logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().backward()
        return -scores / steps * graph.real
    finally:
        restore(model, before)
        for p, flag in trainable:
            p.requires_grad_(flag)


def compare(model, pairs, steps: int = 1, device: str = "cpu") -> dict:
    """{reference_s, circuitlab_s, ratio, max_abs_diff} of every edge's score (circuitlab: the faster of two timed
    runs; the reference, many times slower, once)."""
    graph = EdgeGraph.of(model.cfg)
    ours, ours_s = timed(lambda: attribution.attribute(model, pairs, graph, "patching", "activations", steps).edges, device)
    ours_s = min(ours_s, timed(lambda: attribution.attribute(model, pairs, graph, "patching", "activations", steps), device)[1])
    theirs, theirs_s = timed(lambda: reference_scores(model, pairs, graph, steps), device)
    return {"edges": graph.n_edges, "runs": steps * (1 + graph.n_layers * (1 + graph.has_mlp)), "reference_s": theirs_s,
            "circuitlab_s": ours_s, "ratio": theirs_s / ours_s, "max_abs_diff": float((ours.cpu() - theirs.cpu()).abs().max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1, help="integrated-gradient steps per component")
    args, model, pairs = model_and_prompts(parser)
    row = compare(model, pairs, args.steps, args.device)
    print(f"EAP-IG over activations, {args.steps} steps ({setting_line(args)}): {row['edges']} edges, {row['runs']} runs per batch")
    print(f"| plain reference | circuitlab | ratio | max abs diff |\n| --- | --- | --- | --- |\n"
          f"| {row['reference_s']:.2f} s | {row['circuitlab_s']:.2f} s | {row['ratio']:.1f}x | {row['max_abs_diff']:.1e} |")
    assert row["max_abs_diff"] < 1e-4, f"scores differ by {row['max_abs_diff']}"


if __name__ == "__main__":
    main()
