"""Node- and neuron-level scores of the EAP family: how much each sender (the input, a head, an MLP) and each of its
output's d_model dimensions carries, from the same gradients as the edge scores.

After EAP-IG's reference code (github hannamw/EAP-IG, src/eap/attribute_node.py, `make_hooks_and_matrices` with
`neuron`, and `get_scores_eap` / `get_scores_eap_ig` / `get_scores_ig_activations` there; MIB's circuit track
runs it with `--level node | neuron`, run_attribution.py): a node's score is grad . (source - clean) at the
node's *output*, summed over prompts, positions and dimensions; a neuron's is the same sum per dimension. Sign
and units as the edge scores (the estimated drop of the mean logit difference when the node alone takes its
counterfactual output).

The gradient at a sender's output is the sum of the gradients at the inputs of every receiver it feeds (the
residual stream adds the senders' outputs; each receiver reads its own copy), so it is built here from the
receivers' gradients the edge scorer already has: a node's score is the sum of its edges' scores, and needs no
extra backward. One difference from the reference: its MLP nodes read the gradient at the MLP's *input*
(`hook_mlp_in`) against the MLP's output difference; here every node reads the gradient at its own output.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import logits_hook

LEVELS = ("edge", "node", "neuron")


def receiver_groups(graph: EdgeGraph, grads: dict[str, Tensor], like: Tensor) -> list[tuple[int, Tensor]]:
    """(how many senders it reads, the gradient summed over the group's receivers (batch, pos, d_model)) of each
    layer's attention inputs (every head's q, k and v), each MLP input and the logits, in forward order. `grads`:
    the gradients at the receivers' inputs (attribution._receiver_gradients' names); missing ones are zero."""
    groups = []
    for layer in range(graph.n_layers):
        parts = [grads[name].float().sum(2) for x in "qkv" if (name := f"blocks.{layer}.hook_{x}_input") in grads]
        groups.append((graph.feeding(graph.head_receiver(layer, "q", 0)), sum(parts) if parts else torch.zeros_like(like)))
        if graph.has_mlp:
            grad = grads.get(f"blocks.{layer}.hook_mlp_in")
            groups.append((graph.feeding(graph.mlp_receiver(layer)), torch.zeros_like(like) if grad is None else grad.float()))
    grad = grads.get(logits_hook(graph))
    groups.append((len(graph.senders), torch.zeros_like(like) if grad is None else grad.float()))
    return groups


def sender_gradients(graph: EdgeGraph, grads: dict[str, Tensor], like: Tensor) -> Iterator[tuple[int, int, Tensor]]:
    """(first sender, last sender + 1, the gradient at their outputs) for runs of senders that feed the same
    receivers, last senders first: each is the sum of the groups that read them (a suffix sum)."""
    groups = receiver_groups(graph, grads, like)
    bounds = sorted({feeding for feeding, _ in groups})
    suffix = torch.zeros_like(like)
    for i in range(len(bounds) - 1, -1, -1):
        for feeding, grad in groups:
            if feeding == bounds[i]:
                suffix = suffix + grad
        yield (bounds[i - 1] if i else 0), bounds[i], suffix


def neuron_scores(graph: EdgeGraph, difference: Float[Tensor, "sender batch pos d_model"], grads: dict[str, Tensor],
                  first: int = 0, last: int | None = None) -> Float[Tensor, "sender d_model"]:
    """sum over prompts and positions of grad_out_s x (source_s - clean_s), per dimension, for the senders
    first..last-1 (the rows of the others are 0)."""
    last = len(graph.senders) if last is None else last
    out = torch.zeros(len(graph.senders), difference.shape[-1], dtype=torch.float64)
    for lo, hi, grad in sender_gradients(graph, grads, difference[0].float()):
        lo, hi = max(lo, first), min(hi, last)
        if lo < hi:
            out[lo:hi] = (difference[lo:hi].float() * grad).sum((1, 2)).double()
    return out


def nodes_table(graph: EdgeGraph, neurons: Float[Tensor, "sender d_model"], level: str):
    """nodes.csv: one row per sender (`node`, `score`, `rank` by |score|), or per sender and dimension with a
    `neuron` column, ranked the same way."""
    import pandas as pd

    if level == "node":
        values = neurons.sum(1)
        frame = pd.DataFrame({"node": graph.senders, "score": values.tolist()})
    else:
        d_model = neurons.shape[1]
        frame = pd.DataFrame({"node": [name for name in graph.senders for _ in range(d_model)],
                              "neuron": list(range(d_model)) * len(graph.senders), "score": neurons.reshape(-1).tolist()})
    order = frame["score"].abs().rank(method="first", ascending=False).astype(int)
    return frame.assign(rank=order).sort_values("rank", kind="stable").reset_index(drop=True)


def node_circuit(graph: EdgeGraph, node_scores: Tensor, n: int, absolute: bool) -> Tensor:
    """The edges of the top-n nodes' circuit, as EAP-IG's `Graph.apply_topn(level='node')` forms it: every edge out
    of a kept node (an edge out of a node outside it carries the counterfactual; a node's inputs matter only
    through its outputs)."""
    values = node_scores.abs() if absolute else node_scores
    kept = torch.zeros(len(graph.senders), dtype=torch.bool)
    kept[torch.argsort(values, descending=True, stable=True)[:n]] = True
    return graph.real & kept[:, None]


def node_curve(graph: EdgeGraph, node_scores: Tensor, percentages: list[float], evaluate, empty: float, full: float):
    """MIB's faithfulness curve over nodes (its `evaluate_area_under_curve(level='node')`: the top int(fraction x
    nodes) nodes by signed score for CPR, by |score| for CMD). `evaluate(masks) -> logit differences` runs the
    masked forwards. (node_faithfulness.csv, {node_cpr, node_cmd})."""
    import pandas as pd

    from circuitlab.edges.circuits import curve_areas
    from circuitlab.metrics import usable_gap

    labels, masks = [], []
    for ranking, absolute in (("signed", False), ("absolute", True)):
        for percent in percentages:
            n = int(percent / 100 * len(graph.senders))
            labels.append((ranking, percent, n))
            masks.append(node_circuit(graph, node_scores, n, absolute))
    values = evaluate(torch.stack(masks)).tolist()
    gap = usable_gap(full, empty)
    table = pd.DataFrame([{"ranking": ranking, "percent": percent, "nodes_kept": n, "edges_kept": int(mask.sum()), "logit_diff": value,
                           "faithfulness": (value - empty) / gap} for (ranking, percent, n), mask, value in zip(labels, masks, values)])
    cpr, cmd = curve_areas(percentages, table)
    number = lambda v: None if v != v else v  # noqa: E731  (NaN: null in the manifest)
    return table, {"node_cpr": number(cpr), "node_cmd": number(cmd)}
