"""Circuits cut from edge scores, their faithfulness, and the EAP-IG Graph JSON.

A circuit is a set of edges, pruned to those on a path from the input to the logits: a node (head or MLP) stays
only while some kept edge leaves it and some kept edge enters one of its inputs, and an edge stays only while both
its ends do (the input and the logits always exist). Cuts: the top n edges by score, every edge at or above a
threshold, or greedy growth from the logits (MIB's `apply_greedy`: repeatedly the best-scoring edge into a node
already reached). `absolute` ranks by |score|; otherwise by the signed score (positive: the edge carries the clean
behaviour). A run's chosen circuit counts its n edges after pruning (`select(kept=True)`: the shortest prefix of the
ranking, or of the greedy growth, that keeps n once pruned); MIB's curve counts them before (its definition).

Faithfulness of a circuit C: (m(C) - m(empty)) / (m(full) - m(empty)), with every edge outside C ablated at once.
MIB's curve takes circuits of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 and 100 % of the edges; CPR is the area under it
with signed scores, CMD the area under |1 - f| with absolute scores (trapezoids on the fraction of edges kept).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitlab.edges.graph import EdgeGraph

SELECTIONS = ("topn", "threshold", "greedy", "milp")  # milp: edges/selection.py
MIB_PERCENTAGES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def _ranked(graph: EdgeGraph, scores: Tensor, absolute: bool) -> Tensor:
    values = scores.abs() if absolute else scores.clone()
    return torch.where(graph.real, values, torch.tensor(-math.inf))


def top_n(graph: EdgeGraph, scores: Float[Tensor, "sender receiver"], n: int, absolute: bool = True) -> Bool[Tensor, "sender receiver"]:
    """The n best edges (ties broken by forward order), pruned."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[ranked_order(graph, scores, absolute)[:n]] = True
    return prune(graph, keep.view_as(scores) & graph.real)


def ranked_order(graph: EdgeGraph, scores: Tensor, absolute: bool) -> Tensor:
    """Every edge's flat (sender x receiver) index, best first (ties broken by forward order)."""
    order = torch.argsort(_ranked(graph, scores, absolute).flatten(), descending=True, stable=True)
    return order[: graph.n_edges]  # the pairs that are not edges rank last (-inf)


def at_threshold(graph: EdgeGraph, scores: Tensor, threshold: float, absolute: bool = True) -> Tensor:
    """Every edge whose (absolute) score is at least `threshold`, pruned."""
    return prune(graph, (_ranked(graph, scores, absolute) >= threshold) & graph.real)


def greedy(graph: EdgeGraph, scores: Tensor, n: int, absolute: bool = True) -> Tensor:
    """Grown from the logits: n times, the best-scoring edge into a node already in the circuit; then pruned."""
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[list(itertools.islice(greedy_order(graph, scores, absolute), n))] = True
    return prune(graph, keep.view_as(scores))


def greedy_order(graph: EdgeGraph, scores: Tensor, absolute: bool = True) -> Iterator[int]:
    """The edges' flat indices in the order greedy growth from the logits takes them (ties: lower sender, then
    receiver, first)."""
    value = (scores.abs() if absolute else scores).tolist()
    width = len(graph.receivers)
    reached = set()
    heap: list[tuple[float, int, int]] = []

    def offer(receivers: list[int]) -> None:
        for r in receivers:
            for s in range(graph.feeding(r)):
                heapq.heappush(heap, (-value[s][r], s, r))

    offer([graph.logits_receiver])
    while heap:
        _, s, r = heapq.heappop(heap)
        yield s * width + r
        if s != 0 and s not in reached:
            reached.add(s)
            offer(node_receivers(graph, s))


def keeping_at_least(graph: EdgeGraph, order: Iterable[int], n: int) -> Bool[Tensor, "sender receiver"]:
    """The pruned circuit of the shortest prefix of `order` (flat edge indices) that keeps at least n edges once
    pruned (every edge of `order` when none does). Pruning a longer prefix never keeps fewer edges, so the prefix
    is found by doubling, then bisection."""
    order = iter(order)
    taken: list[int] = []

    def pruned(k: int) -> Tensor:
        while len(taken) < k and (edge := next(order, None)) is not None:
            taken.append(edge)
        keep = torch.zeros(graph.real.numel(), dtype=torch.bool)
        keep[taken[:k]] = True
        return prune(graph, keep.view_as(graph.real))

    if n <= 0:
        return torch.zeros_like(graph.real)
    low, high = n - 1, n  # pruned(low) keeps fewer than n (at most low edges)
    while int((found := pruned(high)).sum()) < n:
        if len(taken) < high:  # the order ran out
            return found
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        if int((candidate := pruned(middle)).sum()) >= n:
            high, found = middle, candidate
        else:
            low = middle
    return found


def node_receivers(graph: EdgeGraph, sender: int) -> list[int]:
    """The receiver indices that are the inputs of the node whose output is `sender`."""
    layer = graph.sender_layer(sender)
    if sender == 0:
        return []
    within = sender - 1 - layer * graph.per_layer_senders
    if within == graph.n_heads:
        return [graph.mlp_receiver(layer)]
    return [graph.head_receiver(layer, x, within) for x in "qkv"]


def _receiver_owner(graph: EdgeGraph) -> Tensor:
    """For every receiver, the sender index of its node (-1 for the logits)."""
    owner = torch.full((len(graph.receivers),), -1, dtype=torch.long)
    for s in range(1, len(graph.senders)):
        for r in node_receivers(graph, s):
            owner[r] = s
    return owner


def prune(graph: EdgeGraph, keep: Bool[Tensor, "sender receiver"]) -> Bool[Tensor, "sender receiver"]:
    """Only edges on a path from the input to the logits."""
    owner = _receiver_owner(graph)
    keep = keep.clone() & graph.real
    while True:
        outgoing = keep.any(1)
        incoming = torch.zeros(len(graph.senders), dtype=torch.bool)
        has_input = keep.any(0)
        fed = owner >= 0
        incoming.index_put_((owner[fed],), has_input[fed], accumulate=True)
        incoming[0] = True
        alive = outgoing & incoming
        receiver_alive = torch.ones(len(graph.receivers), dtype=torch.bool)
        receiver_alive[fed] = alive[owner[fed]]
        pruned = keep & alive[:, None] & receiver_alive[None, :]
        if torch.equal(pruned, keep):
            return keep
        keep = pruned


def select(graph: EdgeGraph, scores: Tensor, how: str, n_edges: int, threshold: float, absolute: bool, kept: bool = False) -> Tensor:
    """A circuit cut by `how`. n_edges counts the edges taken before pruning (MIB's curve), or with `kept` the edges
    the pruned circuit keeps: then topn / greedy take the ranking's (the growth's) first edges until pruning keeps
    at least n_edges of them."""
    if how == "threshold":
        return at_threshold(graph, scores, threshold, absolute)
    if kept:
        order = greedy_order(graph, scores, absolute) if how == "greedy" else ranked_order(graph, scores, absolute).tolist()
        return keeping_at_least(graph, order, n_edges)
    return (greedy if how == "greedy" else top_n)(graph, scores, n_edges, absolute)


def edges_for_percent(graph: EdgeGraph, percent: float) -> int:
    """MIB's count: int(fraction x edges)."""
    return int(percent / 100 * graph.n_edges)


def area(percentages: list[float], values: list[float]) -> float:
    """Trapezoids on the fraction of edges kept (a linear axis), as MIB sums them."""
    xs = [p / 100 for p in percentages]
    return float(sum((xs[i + 1] - xs[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(xs) - 1)))


def curve_areas(percentages: list[float], table) -> tuple[float, float]:
    """MIB's CPR (the area under the signed ranking's faithfulness) and CMD (under |1 - faithfulness| of the absolute
    ranking's) from a curve table with `ranking` (signed / absolute) and `faithfulness` columns, rows in the
    percentages' order; NaN with fewer than two percentages."""
    if len(percentages) < 2:
        return float("nan"), float("nan")
    along = lambda ranking: list(table[table["ranking"] == ranking]["faithfulness"])  # noqa: E731
    return area(percentages, along("signed")), area(percentages, [abs(1 - f) for f in along("absolute")])


def auroc(scores: Tensor, expected: Bool[Tensor, "sender receiver"], real: Tensor) -> float:
    """Area under the ROC curve of |score| separating the expected edges from the rest (ties count half)."""
    values = scores.abs()[real].double()
    labels = expected[real]
    positives, negatives = values[labels], values[~labels]
    if not len(positives) or not len(negatives):
        return float("nan")
    greater = (positives[:, None] > negatives[None, :]).double().sum()
    ties = (positives[:, None] == negatives[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(positives) * len(negatives)))


def graph_json(graph: EdgeGraph, scores: Tensor, keep: Tensor) -> dict:
    """The EAP-IG `Graph.to_json` layout: cfg, nodes {name: {in_graph}}, edges {name: {score, in_graph}}."""
    alive = keep.any(1)
    alive[0] = bool(keep.any())
    nodes = {name: {"in_graph": bool(alive[i])} for i, name in enumerate(graph.senders)}
    nodes["logits"] = {"in_graph": True}
    edges = {graph.edge_name(s, r): {"score": float(scores[s, r]), "in_graph": bool(keep[s, r])} for s, r in graph.edges}
    return {"cfg": graph.config(), "nodes": nodes, "edges": edges}
