"""Which receivers of a batch of circuits need an input of their own in a masked forward, and the few senders' terms
that build it.

A receiver r of circuit c reads the residual stream plus, for every sender s feeding it that c ablates, the
difference d_s = source_s - current_s of this run. With D = the sum of d_s over every sender feeding r (one running
sum per circuit), that input is equally stream + D - (the sum over the senders c keeps): each receiver takes the
form with fewer terms, so a sparse circuit's receivers add a few kept senders and a dense one's a few ablated ones,
and a receiver whose edges are all kept (or all ablated) needs none.

A layer's q / k / v receivers share one input per circuit, the stream or stream + D, whichever more of them read;
only the others ("own" receivers) need their own norm and projection. A layer's MLP and the logits are one receiver
each and always get their input built. Only the differences some term reads are stored ("slots", in sender order).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitlab.edges.graph import EdgeGraph

SPARSE_BELOW = 0.1  # a term matrix denser than this is multiplied as a dense one (measured crossover ~0.1-0.15 on CPU)


@dataclass
class Terms:
    """The inputs of some receivers of one circuit: stream + with_total x D + weights @ the stored differences."""

    local: Int[Tensor, " own"]  # each receiver's position within its group
    with_total: Float[Tensor, " own"]  # 1 where the input is written as stream + D - kept senders
    weights: Float[Tensor, "own slot"]  # +1 / -1 / 0 over the first slots (dense or sparse COO); None: no terms


@dataclass
class Group:
    """Receivers read at one point of the forward: a layer's q / k / v inputs, its MLP input, or the logits."""

    shared_total: Float[Tensor, " circuit"]  # 1 where the shared input of a q / k / v group is stream + D
    circuits: dict[int, Terms]  # the circuits whose receivers here need inputs of their own


@dataclass
class Plan:
    slots: list[int]  # each sender's slot among the stored differences, -1 for a difference no term reads
    n_slots: int
    attention: list[Group]
    mlp: list[Group | None]
    logits: Group

    def own_heads(self, layer: int) -> int:
        return sum(len(t.local) for t in self.attention[layer].circuits.values())


def plan(graph: EdgeGraph, keep: Bool[Tensor, "circuit sender receiver"]) -> Plan:
    """The plan of one masked forward of the circuits `keep` (edges kept; entries that are not edges ignored)."""
    keep = keep.cpu() & graph.real
    ablate = graph.real & ~keep
    raw = {}  # (kind, layer) -> (shared_total, {circuit: (local, with_total, weights over senders)})
    for layer in range(graph.n_layers):
        first = graph.head_receiver(layer, "q", 0)
        raw["attention", layer] = _group(keep, ablate, list(range(first, first + 3 * graph.n_heads)), graph.feeding(first), shared=True)
        if graph.has_mlp:
            receiver = graph.mlp_receiver(layer)
            raw["mlp", layer] = _group(keep, ablate, [receiver], graph.feeding(receiver), shared=False)
    raw["logits", graph.n_layers] = _group(keep, ablate, [graph.logits_receiver], len(graph.senders), shared=False)
    read = torch.zeros(len(graph.senders), dtype=torch.bool)
    for _, circuits in raw.values():
        for _, _, weights in circuits.values():
            read[: weights.shape[1]] |= (weights != 0).any(0)
    senders = read.nonzero()[:, 0]
    slots = torch.full((len(graph.senders),), -1, dtype=torch.long)
    slots[senders] = torch.arange(len(senders))
    groups = {key: _in_slots(shared, circuits, senders) for key, (shared, circuits) in raw.items()}
    return Plan(slots.tolist(), len(senders), [groups["attention", l] for l in range(graph.n_layers)],
                [groups.get(("mlp", l)) for l in range(graph.n_layers)], groups["logits", graph.n_layers])


def _group(keep: Tensor, ablate: Tensor, receivers: list[int], feeding: int, shared: bool):
    kept, ablated = keep[:, :feeding, receivers], ablate[:, :feeding, receivers]  # circuit sender receiver
    n_kept, n_ablated = kept.sum(1), ablated.sum(1)  # circuit receiver
    if shared:  # the shared input is the one more receivers read unchanged
        shared_total = (n_kept == 0).sum(1) >= (n_ablated == 0).sum(1)
        own = torch.where(shared_total[:, None], n_kept > 0, n_ablated > 0)
    else:
        shared_total = torch.zeros(keep.shape[0], dtype=torch.bool)
        own = torch.ones_like(n_kept, dtype=torch.bool)
    with_total = n_kept < n_ablated
    weights = torch.where(with_total[:, None, :], -kept.float(), ablated.float()).transpose(1, 2)  # circuit receiver sender
    circuits = {}
    for c in own.any(1).nonzero()[:, 0].tolist():
        local = own[c].nonzero()[:, 0]
        circuits[c] = (local, with_total[c, local].float(), weights[c, local])
    return shared_total.float(), circuits


def _in_slots(shared_total: Tensor, circuits: dict, senders: Tensor) -> Group:
    """The weights over the stored differences (the senders read below the group's feeding count are the first slots)."""
    out = {}
    for c, (local, with_total, weights) in circuits.items():
        columns = senders[senders < weights.shape[1]]
        in_slots = weights[:, columns]
        nonzero = int((in_slots != 0).sum())
        if nonzero == 0:
            in_slots = None
        elif nonzero < SPARSE_BELOW * in_slots.numel():
            in_slots = in_slots.to_sparse()
        out[c] = Terms(local, with_total, in_slots)
    return Group(shared_total, out)
