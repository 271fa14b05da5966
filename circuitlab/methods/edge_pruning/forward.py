"""The differentiable masked forward that edge pruning trains through: each prompt row has its own mask m in [0, 1]
over every edge, and receiver r's input gets sum_s (1 - m[s, r]) (source_s - current_s) added, where current_s
is sender s's output in this very run and source_s its counterfactual output. m = 1 everywhere is the clean run,
m = 0 the counterfactual one; a 0 / 1 mask is the circuit that circuitlab/edges/masked.py evaluates (the same
semantics; that forward runs without gradients and many circuits at once, this one keeps autograd's graph).

Senders and receivers come from circuitlab/edges/hooks.py (`edges_exposed`, `head_outputs`, `INPUT_HOOK`,
`logits_hook`). A block's q, k and v inputs read the same senders, so their updates are one contraction; the
senders' differences are kept one tensor per finished layer (heads and MLP together), so a receiver's update is
a few contractions, and autograd keeps each difference once.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed, head_outputs, logits_hook
from circuitlab.engine.forward import final_position_logits


class _Differences:
    """The senders' (source - current) of one run, in blocks of consecutive senders: (row, sender, pos, d_model)."""

    def __init__(self) -> None:
        self.blocks: list[tuple[int, Tensor]] = []  # (first sender, differences)
        self.pending: list[Tensor] = []  # this layer's parts, joined into one block when the layer ends
        self.pending_first = 0

    def add(self, first: int, part: Tensor, close: bool) -> None:
        if not self.pending:
            self.pending_first = first
        self.pending.append(part)
        if close:
            self.blocks.append((self.pending_first, torch.cat(self.pending, 1) if len(self.pending) > 1 else self.pending[0]))
            self.pending = []

    def update(self, ablate: Tensor, receivers: slice, fed: int) -> Float[Tensor, "row pos receiver d_model"]:
        """sum over the first `fed` senders of ablate[row, s, r] (source_s - current_s), for the receivers `receivers`."""
        total = None
        parts = list(self.blocks)
        if self.pending:
            parts.append((self.pending_first, torch.cat(self.pending, 1) if len(self.pending) > 1 else self.pending[0]))
        for first, block in parts:
            if first >= fed:
                break
            block = block[:, : fed - first]
            term = torch.einsum("bsr,bspd->bprd", ablate[:, first:first + block.shape[1], receivers], block)
            total = term if total is None else total + term
        return total


def masked_logits(
    model: HookedTransformer, graph: EdgeGraph, tokens: Int[Tensor, "row pos"], source: Tensor,
    mask: Float[Tensor, "row sender receiver"], final: Int[Tensor, " row"],
) -> Float[Tensor, "row vocab"]:
    """The logits at each row's final position of a forward under per-row edge masks (differentiable in `mask`).
    `source`: the counterfactual senders' outputs, broadcastable to (row, pos, sender, d_model)."""
    rows, width, d_model = tokens.shape[0], tokens.shape[1], model.cfg.d_model
    ablate = 1 - mask.to(model.cfg.dtype)
    source = source.to(device=model.cfg.device, dtype=model.cfg.dtype).expand(rows, width, len(graph.senders), d_model)
    source = source.permute(0, 2, 1, 3)  # row sender pos d_model
    differences = _Differences()
    cached: dict[int, Tensor] = {}  # each block's q / k / v update, made at its q input

    def record_stream(first: int, close: bool):
        def hook(activation: Tensor, hook) -> Tensor:
            differences.add(first, source[:, first:first + 1] - activation[:, None], close)
            return activation
        return hook

    def record_heads(layer: int, first: int, close: bool):
        def hook(z: Tensor, hook) -> Tensor:
            outputs = head_outputs(model, layer, z).permute(0, 2, 1, 3)  # row head pos d_model
            differences.add(first, source[:, first:first + graph.n_heads] - outputs, close)
            return z
        return hook

    def receive_qkv(layer: int, x: str):
        first = graph.head_receiver(layer, "q", 0)
        index = "qkv".index(x)

        def hook(activation: Tensor, hook) -> Tensor:
            if x == "q" or layer not in cached:
                cached[layer] = differences.update(ablate, slice(first, first + 3 * graph.n_heads), graph.feeding(first))
            update = cached[layer][:, :, index * graph.n_heads:(index + 1) * graph.n_heads]
            if x == "v":
                cached.pop(layer)
            return activation + update
        return hook

    def receive_one(receiver: int):
        def hook(activation: Tensor, hook) -> Tensor:
            return activation + differences.update(ablate, slice(receiver, receiver + 1), graph.feeding(receiver))[:, :, 0]
        return hook

    hooks = [(INPUT_HOOK, record_stream(0, True))]
    for layer in range(graph.n_layers):
        hooks += [(f"blocks.{layer}.hook_{x}_input", receive_qkv(layer, x)) for x in "qkv"]
        hooks.append((f"blocks.{layer}.attn.hook_z", record_heads(layer, graph.head_sender(layer, 0), not graph.has_mlp)))
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.hook_mlp_in", receive_one(graph.mlp_receiver(layer))))
            hooks.append((f"blocks.{layer}.hook_mlp_out", record_stream(graph.mlp_sender(layer), True)))
    resid_hook = logits_hook(graph)
    final_resid: list[Tensor] = []

    def receive_logits(activation: Tensor, hook) -> Tensor:
        out = activation + differences.update(ablate, slice(graph.logits_receiver, graph.logits_receiver + 1), len(graph.senders))[:, :, 0]
        final_resid.append(out)
        return out

    hooks.append((resid_hook, receive_logits))
    with edges_exposed(model, result=False):
        model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
    return final_position_logits(model, final_resid[0], final.to(model.cfg.device))
