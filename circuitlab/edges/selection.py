"""Circuit selection beyond top-n and greedy: an exact integer program, bootstrap-stable edges, ensembles of scores.

- `milp` (method.select=milp): the connected circuit of at most n edges with the largest sum of (absolute or signed)
  scores, solved exactly by scipy's `milp` (HiGHS). Variables: x_e per edge, y_v per node (head or MLP). Constraints:
  sum x <= n; a kept edge's sender (unless the input) and its receiver's node (unless the logits) are kept,
  x_e <= y_v; a kept node has a kept incoming and a kept outgoing edge, y_v <= sum of its edges. In a DAG these make
  every kept edge lie on an input -> logits path, so the optimum is already pruned (`circuits.prune` leaves it as
  is). Top-n and greedy only approximate it: top-n takes edges that pruning then drops, greedy grows from the logits
  and never looks back. Graphs above MAX_MILP_EDGES are refused (measured: see docs/methods/edges.md).
- bootstrap (method.bootstrap=B): B resamples of the prompts (with replacement, seeded by `seed`), every edge scored
  on each; an edge's `frequency` is the share of resamples whose circuit (the run's select rule) holds it; the run's
  circuit keeps the edges with frequency >= method.bootstrap_keep, pruned. Along MIB's curve the k-edge circuit
  takes the k edges most often among each resample's top k (ties: the full data's ranking), then prunes.
- ensemble (method=ensemble): each member's scores divided by its largest |score| (the sign and the gaps between
  scores kept: the signed curve, CPR, needs the sign; a rank would flatten a method's clear winners into its
  noise), then combined edge by edge by mean, min or max.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import replace

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from circuitlab.edges import circuits
from circuitlab.edges.graph import EdgeGraph
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")

MAX_MILP_EDGES = 40_000
MILP_TIME_LIMIT_S = 120.0
COMBINE = ("mean", "min", "max")


# -- exact selection ---------------------------------------------------------------------------------------------

def milp_circuit(graph: EdgeGraph, scores: Float[Tensor, "sender receiver"], n: int, absolute: bool = True,
                 time_limit: float = MILP_TIME_LIMIT_S) -> Bool[Tensor, "sender receiver"]:
    """The connected circuit of at most n edges with the largest total (absolute) score."""
    import numpy as np
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    keep = torch.zeros_like(graph.real)
    if n <= 0:
        return keep
    senders, receivers = (torch.tensor(index) for index in zip(*graph.edges))
    weight = scores[senders, receivers].double()
    weight = torch.nan_to_num(weight.abs() if absolute else weight, nan=0.0).numpy()
    n_edges, n_nodes = len(graph.edges), len(graph.senders) - 1  # node v is sender v + 1 (the input has no variable)
    owner = circuits._receiver_owner(graph)[receivers]  # the sender index of each edge's receiver node; -1: logits
    rows, cols, values = [], [], []

    def add(row_cols: np.ndarray, row_values: np.ndarray, row_ids: np.ndarray) -> None:
        rows.append(row_ids), cols.append(row_cols), values.append(row_values)

    count = 1  # row 0: the budget; every other row is <= 0
    edge_ids = np.arange(n_edges)
    add(edge_ids, np.ones(n_edges), np.zeros(n_edges, dtype=np.int64))
    for ends in (senders.numpy(), owner.numpy()):  # x_e - y_v <= 0 for the edge's sender and its receiver's node
        has = ends > 0
        ids = count + np.arange(int(has.sum()))
        add(np.concatenate([edge_ids[has], n_edges + ends[has] - 1]), np.concatenate([np.ones(len(ids)), -np.ones(len(ids))]),
            np.concatenate([ids, ids]))
        count += len(ids)
    for ends in (owner.numpy(), senders.numpy()):  # y_v - (its incoming edges) <= 0, y_v - (its outgoing edges) <= 0
        has = ends > 0
        node_rows = count + np.arange(n_nodes)
        add(np.concatenate([n_edges + np.arange(n_nodes), edge_ids[has]]), np.concatenate([np.ones(n_nodes), -np.ones(int(has.sum()))]),
            np.concatenate([node_rows, count + ends[has] - 1]))
        count += n_nodes
    matrix = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(count, n_edges + n_nodes)).tocsr()
    upper = np.zeros(count)
    upper[0] = n
    objective = -np.concatenate([weight, np.zeros(n_nodes)])
    result = milp(objective, constraints=LinearConstraint(matrix, -np.inf, upper), integrality=np.ones(n_edges + n_nodes),
                  bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if result.x is None:
        log.warning("milp found no circuit of %d edges within %.0f s (%s): the empty circuit", n, time_limit, result.message)
        return keep
    if result.status != 0:
        log.warning("milp stopped at %.0f s before proving its %d-edge circuit optimal (gap %.2g)", time_limit, n, getattr(result, "mip_gap", math.nan))
    chosen = torch.from_numpy(result.x[:n_edges] > 0.5)
    keep[senders[chosen], receivers[chosen]] = True
    return circuits.prune(graph, keep)


# -- bootstrap over prompts ---------------------------------------------------------------------------------------

def take(pairs: PromptPairs, rows: Tensor) -> PromptPairs:
    """The prompt pairs at `rows` (repeats allowed), in that order."""
    listed = rows.tolist()
    pick = lambda values: [values[i] for i in listed]  # noqa: E731
    return replace(pairs, clean_tokens=pairs.clean_tokens[rows], corrupted_tokens=pairs.corrupted_tokens[rows],
                   answer_tokens=pairs.answer_tokens[rows], wrong_tokens=pairs.wrong_tokens[rows], lengths=pairs.lengths[rows],
                   named_positions={k: v[rows] for k, v in pairs.named_positions.items()}, clean_texts=pick(pairs.clean_texts),
                   corrupted_texts=pick(pairs.corrupted_texts),
                   corrupted_answer_tokens=None if pairs.corrupted_answer_tokens is None else pairs.corrupted_answer_tokens[rows])


def resample_rows(n: int, resamples: int, seed: int) -> list[Tensor]:
    generator = torch.Generator().manual_seed(int(seed))
    return [torch.randint(0, n, (n,), generator=generator) for _ in range(resamples)]


def bootstrap_scores(score: Callable[[PromptPairs], Tensor], pairs: PromptPairs, resamples: int, seed: int,
                     progress: bool = False) -> Float[Tensor, "resample sender receiver"]:
    """Every edge scored on each of `resamples` resamples of the prompts (one bar over them)."""
    started = time.perf_counter()
    found = []
    for rows in tqdm(resample_rows(pairs.n_pairs, resamples, seed), desc="bootstrap", unit="resample", disable=not progress):
        found.append(score(take(pairs, rows)).float())
    log.info("bootstrap: %d resamples of %d prompts scored in %.1f s", resamples, pairs.n_pairs, time.perf_counter() - started)
    return torch.stack(found)


def frequency(graph: EdgeGraph, resampled: Tensor, choose: Callable[[Tensor], Tensor]) -> Float[Tensor, "sender receiver"]:
    """The share of resamples whose circuit (`choose(scores)`) holds each edge."""
    counts = torch.zeros(graph.real.shape)
    for scores in resampled:
        counts += choose(scores).float()
    return counts / len(resampled)


def _positions(graph: EdgeGraph, scores: Tensor, absolute: bool) -> Tensor:
    """Each edge's place (0 = best) in the ranking, as a flat (sender x receiver) tensor (non-edges last)."""
    order = torch.argsort(circuits._ranked(graph, scores, absolute).flatten(), descending=True, stable=True)
    places = torch.empty_like(order)
    places[order] = torch.arange(len(order))
    return places


def stable_positions(graph: EdgeGraph, scores: Tensor, resampled: Tensor, absolute: bool) -> tuple[Tensor, Tensor]:
    """Every edge's place in the full data's ranking and in each resample's (computed once per ranking)."""
    return _positions(graph, scores, absolute), torch.stack([_positions(graph, s, absolute) for s in resampled])


def stable_top(graph: EdgeGraph, positions: tuple[Tensor, Tensor], k: int) -> Bool[Tensor, "sender receiver"]:
    """The k edges most often among the resamples' top k (ties: the full data's ranking), pruned; `positions`
    from `stable_positions`."""
    full, resampled = positions
    inside = (resampled < k).float().mean(0)
    key = torch.where(graph.real.flatten(), inside * (len(full) + 1) - full.float(), torch.tensor(-math.inf))
    keep = torch.zeros(len(full), dtype=torch.bool)
    keep[torch.argsort(key, descending=True, stable=True)[:k]] = True
    return circuits.prune(graph, keep.view_as(graph.real))


# -- ensembles ----------------------------------------------------------------------------------------------------

def normalised(scores: Tensor, real: Tensor) -> Tensor:
    """scores / max |score| over the edges (0 stays 0; all-zero scores stay zero)."""
    largest = float(scores[real].abs().max()) if bool(real.any()) else 0.0
    return scores / largest if largest > 0 else scores.clone()


def combine(members: list[Tensor], how: str, real: Tensor) -> Float[Tensor, "sender receiver"]:
    """The members' normalised scores combined edge by edge: their mean, or the smallest / largest magnitude with
    the sign of the mean (min: an edge counts only as much as its weakest vote, under either ranking)."""
    stacked = torch.stack([normalised(s.float(), real) for s in members])
    mean = stacked.mean(0)
    if how == "mean":
        return mean * real
    magnitude = stacked.abs().min(0).values if how == "min" else stacked.abs().max(0).values
    return torch.where(mean < 0, -magnitude, magnitude) * real
