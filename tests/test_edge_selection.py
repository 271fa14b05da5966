"""Selection beyond top-n (circuitlab/edges/selection.py): milp against every connected circuit, bootstrap
frequencies against a plain EAP reference on the same resamples, ensembles against their members' own runs."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.edges import circuits, selection
from circuitlab.edges.graph import EdgeGraph
from circuitlab.models import loading
from circuitlab.plan import build_pairs
from tests import edge_reference
from tests.cli_refusal import refused

IOI = ["+experiment=ioi_eap", "task.n_prompts=16", "figures=false", "progress=false"]


def run(tmp_path, name: str, *overrides: str):
    out = tmp_path / name
    cli.main(["run", *IOI, *overrides, f"run.dir={out}"])
    return out


def best_connected(graph: EdgeGraph, scores: torch.Tensor, n: int, absolute: bool) -> float:
    """The largest total score of a circuit of at most n edges that pruning leaves as it is (every subset tried)."""
    value = scores.abs() if absolute else scores
    best = 0.0
    for k in range(1, n + 1):
        for chosen in itertools.combinations(graph.edges, k):
            keep = torch.zeros_like(graph.real)
            keep[tuple(zip(*chosen))] = True
            if torch.equal(circuits.prune(graph, keep), keep):
                best = max(best, float(value[keep].sum()))
    return best


@pytest.mark.parametrize("absolute", [True, False])
def test_milp_is_the_best_connected_circuit(absolute):
    graph = EdgeGraph(2, 1)  # 23 edges: every subset of up to 4 of them is tried
    generator = torch.Generator().manual_seed(3)
    for _ in range(2):
        scores = torch.randn(graph.real.shape, generator=generator) * graph.real
        for n in (1, 2, 3, 4):
            keep = selection.milp_circuit(graph, scores, n, absolute)
            value = scores.abs() if absolute else scores
            assert int(keep.sum()) <= n and torch.equal(circuits.prune(graph, keep), keep)
            assert float(value[keep].sum()) == pytest.approx(best_connected(graph, scores, n, absolute), abs=1e-5)


def test_milp_beats_topn_and_greedy_on_their_own_objective():
    graph = EdgeGraph(3, 3)
    scores = torch.rand(graph.real.shape, generator=torch.Generator().manual_seed(0)) ** 4 * graph.real
    for n in (5, 20, 60):
        keep = selection.milp_circuit(graph, scores, n)
        assert int(keep.sum()) == n and torch.equal(circuits.prune(graph, keep), keep)
        for how in ("topn", "greedy"):
            other = circuits.select(graph, scores, how, n, 0.0, True)
            assert int(other.sum()) <= n and float(scores[keep].sum()) >= float(scores[other].sum()) - 1e-6


def test_take_resamples_every_per_prompt_field():
    cfg = cli.compose_config(IOI)
    pairs = build_pairs(cfg, loading.load_tokenizer(cfg.model))
    rows = torch.tensor([3, 3, 0, 7])
    taken = selection.take(pairs, rows)
    assert taken.n_pairs == 4 and torch.equal(taken.clean_tokens, pairs.clean_tokens[rows])
    assert torch.equal(taken.corrupted_tokens[1], pairs.corrupted_tokens[3]) and taken.answer_tokens.tolist() == pairs.answer_tokens[rows].tolist()
    assert taken.clean_texts == [pairs.clean_texts[i] for i in rows.tolist()]
    assert all(torch.equal(v, pairs.named_positions[k][rows]) for k, v in taken.named_positions.items())


def test_stable_top_keeps_what_most_resamples_rank_first():
    graph = EdgeGraph(2, 2)
    scores = torch.rand(graph.real.shape, generator=torch.Generator().manual_seed(1)) * graph.real
    same = torch.stack([scores] * 3)
    for k in (3, 10, 30):
        assert torch.equal(selection.stable_top(graph, selection.stable_positions(graph, scores, same, True), k), circuits.top_n(graph, scores, k))
    a, b = graph.parse_edge("input->logits", "t"), graph.parse_edge("a1.h1->logits", "t")
    resampled = torch.zeros(3, *graph.real.shape)
    resampled[:, a[0], a[1]] = 1.0  # input->logits first in every resample
    resampled[0, b[0], b[1]] = 2.0  # a1.h1->logits first in one of three
    full = torch.zeros(graph.real.shape)
    full[b] = 5.0
    keep = selection.stable_top(graph, selection.stable_positions(graph, full, resampled, True), 1)
    assert keep[a] and int(keep.sum()) == 1  # the full data alone would pick a1.h1->logits


def test_bootstrap_frequencies_equal_a_plain_reference(tmp_path):
    """B = 4 resamples (seed 0): each resample scored here by the plain EAP reference, its 20-edge circuit cut by
    top-n (kept after pruning); edges.csv's frequency and the circuit (>= 0.5, pruned) are those."""
    out = run(tmp_path, "boot", "method.bootstrap=4", "seed=0")
    edges = pd.read_csv(out / "edges.csv")
    cfg = cli.compose_config(IOI)
    model = loading.load_model(cfg.model)
    pairs = build_pairs(cfg, loading.load_tokenizer(cfg.model))
    graph = EdgeGraph.of(model.cfg)
    counts = torch.zeros(graph.real.shape)
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # the reference differentiates through the weights
        p.requires_grad_(True)
    try:
        for rows in selection.resample_rows(pairs.n_pairs, 4, 0):
            scores = torch.zeros(graph.real.shape)
            values = edge_reference.attribution(model, selection.take(pairs, rows), graph.edge_names)
            scores[tuple(zip(*graph.edges))] = torch.tensor(values)
            counts += circuits.select(graph, scores, "topn", 20, 0.0, True, kept=True).float()
    finally:
        for p in frozen:
            p.requires_grad_(False)
    expected = {graph.edge_name(s, r): float(counts[s, r]) / 4 for s, r in graph.edges}
    found = dict(zip(edges["edge"], edges["frequency"]))
    assert found == pytest.approx(expected) and 0 < sum(0 < f < 1 for f in found.values())  # some edges are unstable
    keep = circuits.prune(graph, (counts / 4 >= 0.5) & graph.real)
    assert set(edges[edges["in_circuit"]]["edge"]) == {graph.edge_name(s, r) for s, r in keep.nonzero().tolist()}


def test_ensemble_combines_its_members_own_scores(tmp_path):
    eap = torch.load(run(tmp_path, "eap", "method=eap") / "results.pt")["scores"]
    eap_ig = torch.load(run(tmp_path, "eap_ig", "method=eap_ig") / "results.pt")["scores"]
    real = torch.load(tmp_path / "eap" / "results.pt")["edge_exists"]
    a, b = eap / eap[real].abs().max(), eap_ig / eap_ig[real].abs().max()
    mean = torch.load(run(tmp_path, "mean", "method=ensemble") / "results.pt")["scores"]
    assert torch.allclose(mean, (a + b) / 2 * real, atol=1e-6)
    smallest = torch.load(run(tmp_path, "min", "method=ensemble", "method.combine=min") / "results.pt")["scores"]
    sign = torch.where(a + b < 0, -1.0, 1.0)
    assert torch.allclose(smallest, sign * torch.minimum(a.abs(), b.abs()) * real, atol=1e-6)
    assert not torch.allclose(smallest, mean, atol=1e-3)


@pytest.mark.parametrize("overrides, message", [
    (["method=edge_patching", "method.bootstrap=3"], "method.bootstrap"),
    (["method.bootstrap=-1"], "method.bootstrap"),
    (["method.bootstrap_keep=0"], "method.bootstrap_keep"),
    (["method=ensemble", "method.members=[eap]"], "method.members"),
    (["method=ensemble", "method.combine=median"], "method.combine"),
    (["method.select=ilp"], "method.select"),
])
def test_bad_selection_settings_are_one_line(tmp_path, capsys, overrides, message):
    assert message in refused(["run", *IOI, *overrides, f"run.dir={tmp_path / 'x'}"], capsys)


def test_milp_on_a_graph_too_big_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(selection, "MAX_MILP_EDGES", 100)  # toy-ioi has 110 edges
    line = refused(["run", *IOI, "method.select=milp", f"run.dir={tmp_path / 'x'}"], capsys)
    assert "method.select" in line and "at most 100 edges" in line and "110" in line
