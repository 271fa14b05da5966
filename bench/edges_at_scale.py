"""Edge methods at a real model's depth: bench/circuit_discovery.py's 30-layer rows.

A Llama-shaped model with random weights, SmolLM2-135M's config (30 layers, d_model 576, 9 query / 3 key-value heads,
123,211 edges; bench/llama_shape.py writes it with `transformers` and circuitlab loads it through `model=local`), the
same 8 prompts x 18 tokens as the other rows (the corrupted prompts differ at positions 2, 5 and 11). Rows:
- MIB's faithfulness curve: the 10 circuits of MIB's percentages (0.1 ... 100 % of the edges, top-n by EAP score),
  with the `patching` counterfactual (positions before the first difference come from the clean run) and `mean`
  (every position computed). Against one plain forward (`model(tokens)`: every position, full logits) of the same
  prompts: before (the hook-based masked forward with TransformerLens' split q / k / v inputs, kept as
  tests/masked_reference.py, all 10 circuits in one forward) and after (circuitlab's masked forward, as many
  circuits per forward as its memory budget holds); masked forwards counted, before and after compared;
- exact edge patching of a seeded sample of 300 edges against two forwards per edge with split q / k / v hooks
  (tests/edge_reference.py, on the first 8 of the sample: seconds each), and against two plain forwards (no hooks:
  the least any two-forward reference costs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from circuitlab.edges import attribution, circuits, masked
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from tests import masked_reference


def llama_model(device: str):
    """circuitlab's model of SmolLM2-135M's shape with random weights (seed 0), through `model=local`."""
    from circuitlab.cli import compose_config
    from circuitlab.models import loading
    from llama_shape import write_checkpoint

    with tempfile.TemporaryDirectory(prefix="edges-at-scale-") as tmp:
        directory = Path(tmp) / "random-135m"  # no architecture name in the path: TransformerLens branches on it
        directory.mkdir()
        write_checkpoint(directory)
        return loading.load_model(compose_config(["model=local", f"model.path={directory}"]).model, device)


def curve_rows(model, pairs, timed) -> list[dict]:
    """Per counterfactual: the plain forward's seconds, and before / after: seconds for the 10 circuits, forwards."""
    graph = EdgeGraph.of(model.cfg)
    with torch.enable_grad():
        scores = attribution.edge_scores(model, pairs, graph, "patching")
    masks = torch.stack([circuits.top_n(graph, scores, circuits.edges_for_percent(graph, p)) for p in circuits.MIB_PERCENTAGES])
    rows = []
    for kind in ("patching", "mean"):
        sources = cf.prepare(model, pairs, graph, kind, pairs.n_pairs)
        model(pairs.clean_tokens)  # warm-up
        plain_s = min(timed(lambda: model(pairs.clean_tokens))[1] for _ in range(3))
        before, before_s = timed(lambda: masked_reference.circuits_logit_diff(model, pairs, graph, sources, masks))
        (after, forwards), after_s = timed(lambda: masked.circuits_logit_diff(model, pairs, graph, sources, masks))
        diff = float((after - before).abs().max())
        print(f"30 layers, MIB curve ({kind}): plain forward {plain_s:.2f} s; before {before_s:.1f} s = {before_s / len(masks) / plain_s:.2f} "
              f"plain forwards per circuit (1 forward); after {after_s:.1f} s = {after_s / len(masks) / plain_s:.2f} ({forwards} forwards); "
              f"max diff {diff:.1e}", flush=True)
        rows.append(dict(kind=kind, circuits=len(masks), plain_s=plain_s, before_s=before_s, after_s=after_s, forwards=forwards, diff=diff))
    return rows


def patching_rows(model, pairs, n_edges: int = 300, n_reference: int = 8) -> list[tuple]:
    """bench/llama_shape.py's edge rows on this model (the reference on the same model, its split-input hooks)."""
    from llama_shape import edge_row

    rows = edge_row(model, model, pairs, n_edges, n_reference)
    for name, peer, mine, _, diff, _ in rows:
        print(f"30 layers, {name}: {peer:.1f} vs {mine:.1f} ms, {peer / mine:.1f}x, max diff {diff}", flush=True)
    return rows


def render(curve: list[dict], patching: list[tuple], n_edges: int, markdown_table) -> str:
    header = ["row", "plain forward (s)", "masked, per circuit (s)", "plain forwards per circuit (target <= 3)", "masked forwards", "max abs diff"]
    rows = []
    for r in curve:
        for when, seconds, forwards, diff in (("before: hook-based, split q / k / v (tests/masked_reference.py)", r["before_s"], 1, "-"),
                                              ("after: block by block (circuitlab)", r["after_s"], r["forwards"], f"{r['diff']:.1e}")):
            rows.append([f"MIB curve, {r['circuits']} circuits, {r['kind']} counterfactual, {when}", f"{r['plain_s']:.2f}",
                         f"{seconds / r['circuits']:.2f}", f"{seconds / r['circuits'] / r['plain_s']:.2f}", str(forwards), diff])
    text = markdown_table(f"At 30 layers: SmolLM2-135M-shaped random Llama, {n_edges} edges", header, rows, left_columns=1)
    header = ["row", "reference (ms per edge)", "circuitlab (ms per edge)", "speed-up", "max abs diff"]
    rows = [[name, f"{peer:.1f}", f"{mine:.2f}", f"{peer / mine:.1f}x" + (f" (target >= {target}x)" if target else ""),
             "-" if diff is None else f"{diff:.1e}"] for name, peer, mine, _, diff, target in patching]
    return text + "\n" + markdown_table("Exact edge patching at 30 layers (same model and prompts)", header, rows, left_columns=1)


def json_rows(curve: list[dict], patching: list[tuple]) -> list[dict]:
    rows = []
    for r in curve:
        rows.append({"name": f"30 layers: MIB curve ({r['kind']}), hook-based before vs block-by-block after", "points": f"{r['circuits']} circuits",
                     "peer_s": r["before_s"], "circuitlab_s": r["after_s"], "max_abs_diff": r["diff"]})
        rows.append({"name": f"30 layers: MIB curve ({r['kind']}) vs {r['circuits']} plain forwards", "points": f"{r['circuits']} circuits",
                     "peer_s": r["plain_s"] * r["circuits"], "circuitlab_s": r["after_s"], "max_abs_diff": 0.0})
    for name, peer, mine, _, diff, _ in patching:
        rows.append({"name": f"30 layers: {name}", "points": "edges", "peer_s": peer / 1000, "circuitlab_s": mine / 1000,
                     "max_abs_diff": 0.0 if diff is None else diff})
    return rows
