"""The block-by-block masked forward (circuitlab/edges/masked_forward.py, masked_plan.py) against independent
computations: the hook-based masked forward it replaced (tests/masked_reference.py: TransformerLens' split q / k / v
inputs, every receiver adding every ablated sender's difference), plain clean / corrupted forwards for the full /
empty circuits, and two forwards per edge (tests/edge_reference.py) for all-but-one circuits. The circuits are
chosen to take every path of the new forward, and the test checks that they do: sparse and dense term matrices,
layers whose q / k / v inputs are all shared beside layers with heads of their own, the shared input with and
without D, own keys / values under grouped-query attention, several circuits per forward, prompts of different
lengths, the patching / mean / zero counterfactuals."""

from __future__ import annotations

import pytest
import torch

from circuitlab.edges import circuits, masked, masked_plan
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs
from tests import edge_reference, hf_fixtures, masked_reference
from tests.test_edges import random_model

ATOL = 1e-4
VARIANTS = {
    "gpt2-like": {},
    "llama-like (GQA, rotary, RMS, gated)": dict(n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary",
                                                 rotary_dim=8, act_fn="silu", gated_mlp=True),
    "parallel attention + MLP": dict(parallel_attn_mlp=True),
    "attention only": dict(attn_only=True),
}


def uneven_pairs(n: int = 5, width: int = 9, first_difference: int = 3, d_vocab: int = 60, seed: int = 0) -> PromptPairs:
    """Prompts of different lengths (right-padded), corrupted from `first_difference` on."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, d_vocab, (n, width), generator=g)
    corrupted = clean.clone()
    corrupted[:, first_difference:] = torch.randint(0, d_vocab, (n, width - first_difference), generator=g)
    lengths = torch.tensor([width, width - 2, width - 1, first_difference + 2, width][:n])
    answer, wrong = torch.randint(0, d_vocab, (n,), generator=g), torch.randint(0, d_vocab, (n,), generator=g)
    return PromptPairs(clean, corrupted, answer, wrong, lengths, {}, [""] * n, [""] * n, [])


def circuit_masks(graph: EdgeGraph, seed: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Empty, full, top-n at sparse and dense fractions, half the edges at random, one layer's q / k / v all kept in
    an otherwise empty circuit (and all ablated in an otherwise full one), one head's key edges alone, and three
    all-but-one circuits (returned with their edges)."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(graph.real.shape, generator=g)
    masks = [torch.zeros_like(graph.real), graph.real.clone()]
    masks += [circuits.top_n(graph, scores, max(1, int(f * graph.n_edges))) for f in (0.005, 0.03, 0.2, 0.8, 0.99)]
    masks.append((torch.rand(graph.real.shape, generator=g) < 0.5) & graph.real)
    first = graph.head_receiver(1, "q", 0)
    layer_qkv = slice(first, first + 3 * graph.n_heads)
    one_layer = torch.zeros_like(graph.real)
    one_layer[:, layer_qkv] = graph.real[:, layer_qkv]
    all_but_layer = graph.real.clone()
    all_but_layer[:, layer_qkv] = False
    one_key = torch.zeros_like(graph.real)
    key = graph.head_receiver(graph.n_layers - 1, "k", 1)
    one_key[:, key] = graph.real[:, key]
    masks += [one_layer, all_but_layer, one_key]
    edges = [(0, graph.logits_receiver), (graph.head_sender(0, 1), graph.head_receiver(1, "v", 0)), (0, graph.head_receiver(1, "k", 3))]
    if graph.has_mlp:
        edges[0] = (graph.mlp_sender(0), graph.mlp_receiver(1))
    for s, r in edges:
        keep = graph.real.clone()
        keep[s, r] = False
        masks.append(keep)
    return torch.stack(masks), edges


def plain_logit_diffs(model, pairs) -> tuple[float, float]:
    rows = torch.arange(pairs.n_pairs)
    with torch.no_grad():
        return tuple(logit_diff(model(t)[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().item()
                     for t in (pairs.clean_tokens, pairs.corrupted_tokens))


def paths_taken(graph: EdgeGraph, masks: torch.Tensor) -> dict[str, bool]:
    plan = masked_plan.plan(graph, masks)
    terms = [t for g in [*plan.attention, *[m for m in plan.mlp if m], plan.logits] for t in g.circuits.values()]
    own = [set(g.circuits) for g in plan.attention]
    return {
        "sparse terms": any(t.weights is not None and t.weights.is_sparse for t in terms),
        "dense terms": any(t.weights is not None and not t.weights.is_sparse for t in terms),
        "inputs without terms": any(t.weights is None for t in terms),
        "a circuit with a layer of shared q / k / v inputs only beside one with own heads": any(
            set(range(len(masks))) - o and o for o in own),
        "shared input with and without D in one forward": any(0 < float(g.shared_total.sum()) < len(masks) for g in plan.attention),
        "own keys or values": any(bool((t.local // graph.n_heads >= 1).any()) for g in plan.attention for t in g.circuits.values()),
        "differences not stored (the sparse circuits alone)": masked_plan.plan(graph, masks[:3]).n_slots < len(graph.senders),
    }


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_masked_forward_equals_references_and_takes_every_path(variant):
    model = random_model(**VARIANTS[variant])
    graph = EdgeGraph.of(model.cfg)
    pairs = uneven_pairs()
    masks, edges = circuit_masks(graph)
    taken = paths_taken(graph, masks)
    assert all(taken.values()), taken
    clean, corrupted = plain_logit_diffs(model, pairs)
    for kind in ("patching", "mean", "zero"):
        sources = cf.prepare(model, pairs, graph, kind, pairs.n_pairs)
        values, forwards = masked.circuits_logit_diff(model, pairs, graph, sources, masks)
        reference = masked_reference.circuits_logit_diff(model, pairs, graph, sources, masks)
        assert forwards == 1 and torch.allclose(values, reference, atol=ATOL), (variant, kind, (values - reference).abs().max())
        patched = torch.tensor([edge_reference.patch_edge(model, pairs, graph.edge_name(s, r), kind) for s, r in edges])
        assert torch.allclose(values[-len(edges):], patched, atol=ATOL), (variant, kind, values[-len(edges):], patched)
        assert abs(float(values[1]) - clean) < ATOL
        if kind == "patching":
            assert abs(float(values[0]) - corrupted) < ATOL


def test_circuits_split_over_forwards_equal_one_forward():
    model = random_model(n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8)
    graph = EdgeGraph.of(model.cfg)
    pairs = uneven_pairs()
    masks, _ = circuit_masks(graph, seed=1)
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    whole, one = masked.circuits_logit_diff(model, pairs, graph, sources, masks)
    alone = torch.cat([masked.circuits_logit_diff(model, pairs, graph, sources, masks[i:i + 1])[0] for i in range(len(masks))])
    assert one == 1 and torch.allclose(whole, alone, atol=1e-5)


@pytest.mark.parametrize("arch", hf_fixtures.ARCHITECTURES)
def test_masked_forward_on_every_architecture(arch, tmp_path):
    """The same circuits on each architecture of the test matrix (rotary, GQA, q / k norms, local attention, soft
    caps, parallel blocks; post-norm blocks where the edge methods accept them), patching and mean counterfactuals."""
    from circuitlab.config import ModelConfig
    from circuitlab.edges.hooks import check_additive
    from circuitlab.errors import CircuitlabError
    from circuitlab.models import hf_checkpoint, loading
    from tests.conftest import ioi_pairs

    defaults = ModelConfig()
    processing = {flag: getattr(defaults, flag) for flag in loading.PROCESSING_FLAGS}
    model = hf_checkpoint.load_checkpoint(hf_fixtures.build(arch, tmp_path / arch), dtype=torch.float32, processing=processing)
    try:
        check_additive(model.cfg)
    except CircuitlabError:
        pytest.skip(f"{arch}: the edge methods refuse it")
    pairs = ioi_pairs(model, n_prompts=4)
    graph = EdgeGraph.of(model.cfg)
    masks, edges = circuit_masks(graph)
    clean, corrupted = plain_logit_diffs(model, pairs)
    for kind in ("patching", "mean"):
        sources = cf.prepare(model, pairs, graph, kind, pairs.n_pairs)
        values, _ = masked.circuits_logit_diff(model, pairs, graph, sources, masks)
        reference = masked_reference.circuits_logit_diff(model, pairs, graph, sources, masks)
        assert torch.allclose(values, reference, atol=ATOL), (arch, kind, (values - reference).abs().max())
        assert abs(float(values[1]) - clean) < ATOL
        if kind == "patching":
            assert abs(float(values[0]) - corrupted) < ATOL
    patched = torch.tensor([edge_reference.patch_edge(model, pairs, graph.edge_name(s, r), "mean") for s, r in edges])
    assert torch.allclose(values[-len(edges):], patched, atol=ATOL), (arch, values[-len(edges):], patched)
