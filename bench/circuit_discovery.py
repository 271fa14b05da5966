"""Edge-level circuit discovery: circuitlab against its references and auto-circuit, side by side in one process.

GPT-2-small-shaped model with random weights (no download; 32,491 edges), 8 prompts x 18 tokens; the corrupted
prompts differ at positions 2, 5 and 11 (bench/patching.py's prompts). Rows:
- EAP over every edge, against one plain clean forward + backward of the same batch (full logits, weights
  differentiable: what any gradient method costs at least); and auto-circuit 1.0.1's EAP
  (`mask_gradient_prune_scores`, mask_val=0) on the same model, prompts and answers, scores compared;
- exact edge patching of a seeded random sample of 300 edges, against the plain reference (two forwards per edge,
  hooks on the receiver's input: tests/edge_reference.py), per edge, equal to 1e-4;
- MIB's faithfulness curve: 10 circuits (0.1 ... 100 % of the edges), masked forwards counted;
- at 30 layers (bench/edges_at_scale.py: SmolLM2-135M-shaped random Llama, 123,211 edges): MIB's curve against plain
  forwards, before (the hook-based masked forward, tests/masked_reference.py) and after; exact edge patching against
  two split-hook forwards per edge and two plain forwards (a few minutes; --no-30-layers skips them);
- EAP-IG over activations (1 step per component) against its plain reference in EAP-IG's own structure
  (bench/eap_ig_activations.py; minutes: --no-ig-activations skips it);
- edge pruning: seconds per epoch beside a plain forward + backward of the same prompts, on the GPT-2-small and the
  30-layer shapes (bench/edge_pruning.py; --no-edge-pruning skips it).
Prints the tables and writes them to bench/results/circuit_discovery.md (default CPU setting, every row, only).

    python bench/circuit_discovery.py
    OMP_NUM_THREADS=1 python bench/circuit_discovery.py --no-30-layers
    python bench/circuit_discovery.py --edges 300 --device cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from patching import markdown_table, model_and_prompts, on_device, random_pairs, recorded_setting, setting_line, timed  # noqa: E402
from circuitlab.edges import attribution, circuits, masked  # noqa: E402
from circuitlab.edges import counterfactual as cf  # noqa: E402
from circuitlab.edges.graph import EdgeGraph  # noqa: E402
from circuitlab.edges.patching import patch_edges  # noqa: E402
from circuitlab.metrics import logit_diff  # noqa: E402
from circuitlab.results import write_text  # noqa: E402
from tests import edge_reference  # noqa: E402


def forward_backward(model, pairs) -> float:
    """One plain clean forward (full logits) and backward of the mean logit difference."""
    with torch.enable_grad():
        logits = model(pairs.clean_tokens)
        rows = torch.arange(pairs.n_pairs, device=logits.device)
        metric = logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
        metric.backward()
    model.zero_grad(set_to_none=True)
    return metric.item()


def autocircuit_row(model, pairs, graph, ours):
    """(seconds, max abs diff to ours) of auto-circuit's EAP, or (None, reason) when it cannot run here."""
    try:
        from autocircuit_peer import time_autocircuit_eap
    except ImportError as err:  # pragma: no cover
        return None, f"not importable: {err}"
    try:
        seconds, theirs = time_autocircuit_eap(model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.answer_tokens, pairs.wrong_tokens)
    except ImportError as err:
        return None, f"auto-circuit is not installed ({err.name}); pip install --no-deps auto-circuit==1.0.1 attrs plotly blobfile lxml"
    names = graph.edge_names
    missing = [n for n in names if n not in theirs]
    if missing:
        return seconds, f"its graph lacks {len(missing)} of our edges (e.g. {missing[0]})"
    ours_flat = torch.tensor([float(ours[s, r]) for s, r in graph.edges])
    theirs_flat = -torch.tensor([theirs[n] for n in names])  # theirs: grad . difference; ours: minus it
    return seconds, float((ours_flat - theirs_flat).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", type=int, default=300, help="edges in the exact-patching sample (>= 300 for the record)")
    parser.add_argument("--no-30-layers", dest="scale", action="store_false", help="skip the 30-layer rows (bench/edges_at_scale.py)")
    parser.add_argument("--no-ig-activations", dest="ig_activations", action="store_false", help="skip EAP-IG over activations' row")
    parser.add_argument("--no-edge-pruning", dest="edge_pruning", action="store_false", help="skip edge pruning's rows")
    args, model, pairs = model_and_prompts(parser)
    graph = EdgeGraph.of(model.cfg)
    print(f"{graph.n_edges} edges", flush=True)
    forward_backward(model, pairs)  # warm-up
    base_s = min(timed(lambda: forward_backward(model, pairs), args.device)[1] for _ in range(3))
    scores, eap_s = timed(lambda: attribution.edge_scores(model, pairs, graph, "patching"), args.device)
    eap_s = min(eap_s, timed(lambda: attribution.edge_scores(model, pairs, graph, "patching"), args.device)[1])
    print(f"EAP: {eap_s:.2f} s = {eap_s / base_s:.2f}x one forward + backward ({base_s:.2f} s)", flush=True)
    ac_s, ac_diff = autocircuit_row(model, pairs, graph, scores)
    print(f"auto-circuit EAP: {ac_s if ac_s is None else round(ac_s, 2)} s, agreement {ac_diff}", flush=True)

    generator = torch.Generator().manual_seed(0)
    sample = [graph.edges[i] for i in torch.randperm(graph.n_edges, generator=generator)[: args.edges].sort().values.tolist()]
    (exact, _), ours_s = timed(lambda: patch_edges(model, pairs, graph, "patching", sample), args.device)
    reference, ref_s = timed(lambda: torch.tensor([edge_reference.patch_edge(model, pairs, graph.edge_name(s, r)) for s, r in sample]), args.device)
    patch_diff = float((exact - reference).abs().max())
    print(f"edge patching, {len(sample)} edges: reference {ref_s:.1f} s, circuitlab {ours_s:.2f} s, {ref_s / ours_s:.1f}x, max diff {patch_diff:.1e}", flush=True)

    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    masks = torch.stack([circuits.top_n(graph, scores, circuits.edges_for_percent(graph, p)) for p in circuits.MIB_PERCENTAGES])
    (values, forwards), curve_s = timed(lambda: masked.circuits_logit_diff(model, pairs, graph, sources, masks), args.device)
    print(f"MIB curve: 10 circuits in {forwards} masked forwards, {curve_s:.2f} s", flush=True)

    text = render(args, graph, base_s, eap_s, ac_s, ac_diff, len(sample), ref_s, ours_s, patch_diff, forwards, curve_s)
    scale_curve, scale_patching = [], []
    if args.scale:
        import edges_at_scale

        big = edges_at_scale.llama_model(args.device)
        big_pairs = random_pairs(args.prompts, args.tokens, big.cfg.d_vocab)
        if args.device != "cpu":
            big_pairs = on_device(big_pairs, args.device)
        scale_curve = edges_at_scale.curve_rows(big, big_pairs, lambda f: timed(f, args.device))
        scale_patching = edges_at_scale.patching_rows(big, big_pairs, args.edges)
        text += "\n" + edges_at_scale.render(scale_curve, scale_patching, EdgeGraph.of(big.cfg).n_edges, markdown_table)
    learned, learned_json = later_methods(args, model, pairs)
    text += learned
    print(text)
    if args.json:  # the rows scripts/gpu_check.sh tabulates (name, points, peer_s, circuitlab_s, max_abs_diff)
        import json

        rows = [{"name": "EAP vs one forward + backward", "points": f"{graph.n_edges} edges", "peer_s": base_s, "circuitlab_s": eap_s, "max_abs_diff": 0.0}]
        if ac_s is not None and not isinstance(ac_diff, str):
            rows.append({"name": "EAP vs auto-circuit", "points": f"{graph.n_edges} edges", "peer_s": ac_s, "circuitlab_s": eap_s, "max_abs_diff": ac_diff})
        rows.append({"name": "exact edge patching vs two forwards per edge", "points": f"{len(sample)} edges", "peer_s": ref_s,
                     "circuitlab_s": ours_s, "max_abs_diff": patch_diff})
        rows.append({"name": f"MIB curve: 10 circuits in {forwards} masked forward(s)", "points": "10 circuits", "peer_s": curve_s,
                     "circuitlab_s": curve_s, "max_abs_diff": 0.0})
        if args.scale:
            rows += edges_at_scale.json_rows(scale_curve, scale_patching)
        rows += learned_json
        args.json.write_text(json.dumps({"setting": setting_line(args), "rows": rows}, indent=2) + "\n")
    assert patch_diff < 1e-4, f"exact edge patching differs from the reference by {patch_diff}"
    for row in scale_curve:
        assert row["diff"] < 1e-4, f"30 layers: the masked forward differs from the hook-based one by {row['diff']} ({row['kind']})"
    for name, *_, diff, _ in scale_patching:
        assert diff is None or diff < 1e-4, f"30 layers: {name} differs by {diff}"
    for row in learned_json:
        assert row["max_abs_diff"] < 1e-4, f"{row['name']} differs from its reference by {row['max_abs_diff']}"
    if recorded_setting(args) and args.edges >= 300 and args.scale and args.ig_activations and args.edge_pruning:
        write_text(Path(__file__).parent / "results" / "circuit_discovery.md", text)


def later_methods(args, model, pairs) -> tuple[str, list[dict]]:
    """The rows of EAP-IG over activations and of edge pruning (each skippable): their table and JSON rows."""
    rows, table = [], []
    if args.ig_activations:
        import eap_ig_activations

        row = eap_ig_activations.compare(model, pairs, steps=1, device=args.device)
        print(f"EAP-IG over activations: reference {row['reference_s']:.1f} s, circuitlab {row['circuitlab_s']:.2f} s, "
              f"{row['ratio']:.1f}x, max diff {row['max_abs_diff']:.1e}", flush=True)
        rows.append({"name": "EAP-IG over activations (1 step) vs its plain reference", "points": f"{row['edges']} edges, {row['runs']} runs",
                     "peer_s": row["reference_s"], "circuitlab_s": row["circuitlab_s"], "max_abs_diff": row["max_abs_diff"]})
        table.append([rows[-1]["name"], rows[-1]["points"], f"{row['reference_s']:.2f}", f"{row['circuitlab_s']:.2f}",
                      f"{row['ratio']:.1f}x", f"{row['max_abs_diff']:.1e}"])
    if args.edge_pruning:
        import edge_pruning

        for row in edge_pruning.rows(prompts=args.prompts, tokens=args.tokens, device=args.device):
            rows.append(row)
            table.append([row["name"], row["points"], f"{row['peer_s']:.2f} (plain fwd + bwd)", f"{row['circuitlab_s']:.2f}",
                          f"{row['circuitlab_s'] / row['peer_s']:.1f}x the plain step", f"{row['max_abs_diff']:.1e}"])
    if not table:
        return "", rows
    header = ["row", "edges, work", "peer / baseline (s)", "circuitlab (s)", "ratio", "max abs diff"]
    return "\n" + markdown_table(f"EAP-IG over activations and edge pruning ({setting_line(args)})", header, table, left_columns=2), rows


def render(args, graph, base_s, eap_s, ac_s, ac_diff, n_sample, ref_s, ours_s, patch_diff, forwards, curve_s) -> str:
    ac_cells = ["auto-circuit 1.0.1 EAP (mask_val=0)", f"{graph.n_edges}", "-" if ac_s is None else f"{ac_s:.2f}",
                f"{eap_s:.2f}", "-" if ac_s is None else f"{ac_s / eap_s:.1f}x",
                ac_diff if isinstance(ac_diff, str) else f"{ac_diff:.1e}"]
    rows = [
        ["EAP, every edge vs one forward + backward", f"{graph.n_edges}", f"{base_s:.2f}", f"{eap_s:.2f}",
         f"{eap_s / base_s:.2f}x the forward + backward (target <= 3x)", "-"],
        ac_cells,
        [f"exact edge patching vs two forwards per edge (per edge, ms)", f"{n_sample}", f"{1000 * ref_s / n_sample:.1f}",
         f"{1000 * ours_s / n_sample:.2f}", f"{ref_s / ours_s:.1f}x (target >= 20x)", f"{patch_diff:.1e}"],
        ["MIB faithfulness curve, 10 circuits", "10", "-", f"{curve_s:.2f}", f"{forwards} masked forward(s) per batch (target <= 10)", "-"],
    ]
    header = ["row", "edges", "peer / baseline (s)", "circuitlab (s)", "ratio", "max abs diff"]
    return markdown_table(f"Edge-level circuit discovery ({setting_line(args)})", header, rows, left_columns=1)


if __name__ == "__main__":
    main()
