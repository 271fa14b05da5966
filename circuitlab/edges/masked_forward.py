"""The masked forward's blocks, written over the model's own modules (its norms, attention and MLP), as
TransformerLens' TransformerBlock runs them, with each receiver's input built as `masked_plan` says.

Per block and circuit: the q / k / v inputs share one normalised input (the stream, or stream + D); the few heads
whose input differs get their own norm and projection, written into the attention's queries, keys or values at
TransformerLens' hook_q / hook_k / hook_v (before any q / k norm and rotary, where its split inputs put them). Keys
and values are grouped (one per key-value head) unless some key or value input of the layer is a head's own. Each
head's sender output comes from `hooks.head_outputs` (a post-norm head's share of the normalised attention output),
the MLP's from its module; D grows by (source - current) of every sender as the forward passes it, and the
differences some receiver reads are stored. The logits read the final position only.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import attention_output_norm, head_outputs, input_norms
from circuitlab.edges.masked_plan import Group, Plan, Terms
from circuitlab.engine.forward import frozen_prefix


class Run:
    """One masked forward of `copies` circuits over n prompts at `width` positions: the stream, D and the stored
    differences, circuit-major (circuit, prompt, position, d_model)."""

    def __init__(self, model: HookedTransformer, graph: EdgeGraph, plan: Plan, source: Tensor, embed: Tensor, copies: int):
        self.model, self.graph, self.plan, self.copies = model, graph, plan, copies
        n, width, d_model = embed.shape
        self.shape = (copies, n, width, d_model)
        self.source = source.expand(n, width, len(graph.senders), d_model)  # a view: a mean or zero source is one for all
        self.resid = embed.expand(self.shape).contiguous()
        self.diffs = torch.empty(copies, plan.n_slots, n * width * d_model, device=embed.device, dtype=embed.dtype)
        self.total = torch.zeros(self.shape, device=embed.device, dtype=embed.dtype)
        self._record(0, embed[:, :, None].expand(copies, n, width, 1, d_model))
        self._device_terms = {}

    def _record(self, first: int, current: Float[Tensor, "circuit n pos k d_model"]) -> None:
        """D += source - current of senders first, first + 1, ...; their differences stored where some term reads them."""
        k = current.shape[3]
        source = self.source[:, :, first:first + k]
        self.total += source.sum(2) - current.sum(3)
        for i in range(k):
            slot = self.plan.slots[first + i]
            if slot >= 0:
                self.diffs[:, slot] = (source[:, :, i] - current[:, :, :, i]).reshape(self.copies, -1)

    def _terms(self, terms: Terms) -> Tensor | None:
        key = id(terms)
        if key not in self._device_terms:
            weights = terms.weights
            if weights is not None:
                if weights.is_sparse and (self.diffs.dtype != torch.float32 or self.diffs.device.type not in ("cpu", "cuda")):
                    weights = weights.to_dense()
                weights = weights.to(device=self.diffs.device, dtype=self.diffs.dtype)
            self._device_terms[key] = (weights, terms.with_total.to(device=self.diffs.device, dtype=self.diffs.dtype))
        return self._device_terms[key]

    def own_inputs(self, group: Group, stream: Float[Tensor, "circuit n pos d_model"], diffs: Tensor | None = None,
                   total: Tensor | None = None) -> tuple[Tensor, list[int], list[Tensor]]:
        """The inputs of the group's own receivers, stacked (own, n, pos, d_model) in circuit order, each circuit's
        index repeated per receiver, and their positions within the group."""
        diffs = self.diffs if diffs is None else diffs
        total = self.total if total is None else total
        parts, circuits, local = [], [], []
        for c, terms in group.circuits.items():
            weights, with_total = self._terms(terms)
            x = stream[c].reshape(1, -1) + with_total[:, None] * total[c].reshape(1, -1)
            if weights is not None:
                block = diffs[c, :weights.shape[1]]
                x = x + (torch.sparse.mm(weights, block) if weights.is_sparse else weights @ block)
            parts.append(x)
            circuits += [c] * len(terms.local)
            local.append(terms.local)
        inputs = torch.cat(parts).view(-1, *stream.shape[1:]) if parts else stream[:0]
        return inputs, circuits, local

    def block(self, layer: int, prefix: dict[str, Tensor] | None, start: int) -> None:
        model, graph, copies = self.model, self.graph, self.copies
        block, cfg = model.blocks[layer], model.cfg
        attn_norm, mlp_norm = input_norms(model, layer)
        rows = lambda t: t.reshape(-1, *t.shape[2:])  # noqa: E731  circuit x prompt -> rows
        group = self.plan.attention[layer]
        shared = self.resid
        if bool(group.shared_total.any()):
            shared = self.resid + group.shared_total.to(self.total)[:, None, None, None] * self.total
        normalized = attn_norm(rows(shared))
        own, circuits, local = self.own_inputs(group, self.resid)
        projected = _own_projections(model, layer, attn_norm(own), torch.cat(local) if local else torch.zeros(0, dtype=torch.long),
                                     torch.tensor(circuits, dtype=torch.long))
        ungroup = cfg.n_key_value_heads is not None and any(kind in projected for kind in "kv")
        captured = {}

        def overwrite(kind: str):
            def hook(activation: Tensor, hook) -> Tensor:
                circuit, head, values = projected[kind]
                activation.view(copies, -1, *activation.shape[1:])[circuit.to(activation.device), :, :, head.to(activation.device)] = values
                return activation
            return hook

        def keep_z(z: Tensor, hook) -> Tensor:
            captured["z"] = z
            return z

        hooks = [(block.attn.hook_z, keep_z)] + [(getattr(block.attn, f"hook_{kind}"), overwrite(kind)) for kind in projected]
        entry = None if prefix is None else frozen_prefix(model, _keys_values(model, prefix, layer, ungroup), layer, start, copies)
        with _hooked(hooks), _ungrouped(model, ungroup):
            attn_out = block.attn(query_input=normalized, key_input=normalized, value_input=normalized, past_kv_cache_entry=entry)
        after = attention_output_norm(model, layer)  # post-norm blocks: the output as it joins the stream
        attn_out = (attn_out if after is None else after(attn_out)).view(self.shape)
        heads = head_outputs(model, layer, captured["z"]).view(*self.shape[:3], graph.n_heads, -1)
        if not graph.has_mlp:
            self._record(graph.head_sender(layer, 0), heads)
            self.resid = self.resid + attn_out
            return
        if cfg.parallel_attn_mlp:  # the MLP reads the block's input and the senders before the block
            mlp_in, _, _ = self.own_inputs(self.plan.mlp[layer], self.resid)
            self._record(graph.head_sender(layer, 0), heads)
        else:
            self._record(graph.head_sender(layer, 0), heads)
            mlp_in, _, _ = self.own_inputs(self.plan.mlp[layer], self.resid + attn_out)
        mlp_out = block.apply_mlp(mlp_norm(mlp_in.view(-1, *self.shape[2:]))).view(self.shape)
        self._record(graph.mlp_sender(layer), mlp_out[:, :, :, None])
        self.resid = self.resid + attn_out + mlp_out

    def final_inputs(self, final: Tensor) -> Float[Tensor, "rows 1 d_model"]:
        """The logits' input at each prompt's final position (relative to the positions computed)."""
        n = self.shape[1]
        at = lambda t: t.view(*t.shape[:-1], *self.shape[1:])[..., torch.arange(n), final, :]  # noqa: E731
        stream = self.resid[:, torch.arange(n), final][:, :, None]  # circuit n 1 d_model
        diffs = at(self.diffs).reshape(self.copies, self.plan.n_slots, n * self.shape[3])
        total = self.total[:, torch.arange(n), final][:, :, None]
        inputs, _, _ = self.own_inputs(self.plan.logits, stream, diffs, total)
        return inputs.reshape(-1, 1, inputs.shape[-1])


def _own_projections(model: HookedTransformer, layer: int, normalized: Tensor, local: Tensor, circuits: Tensor) -> dict:
    """kind -> (circuit, head, that head's query / key / value from its own normalised input) of the own receivers."""
    attn, n_heads = model.blocks[layer].attn, model.cfg.n_heads
    out = {}
    for index, kind in enumerate("qkv"):
        chosen = (local // n_heads == index).nonzero()[:, 0]
        if len(chosen) == 0:
            continue
        heads = local[chosen] % n_heads
        weight, bias = _head_weights(attn, kind, heads)
        values = torch.einsum("enpd,edh->enph", normalized[chosen.to(normalized.device)], weight) + bias[:, None, None]
        out[kind] = (circuits[chosen], heads, values)
    return out


def _head_weights(attn, kind: str, heads: Tensor) -> tuple[Tensor, Tensor]:
    """The projection of query head `heads` (its key-value head's under grouped-query attention)."""
    if kind != "q" and hasattr(attn, f"_W_{kind.upper()}"):
        group = attn.cfg.n_heads // attn.cfg.n_key_value_heads
        index = (heads // group).to(attn.W_Q.device)
        return getattr(attn, f"_W_{kind.upper()}")[index], getattr(attn, f"_b_{kind.upper()}")[index]
    index = heads.to(attn.W_Q.device)
    return getattr(attn, f"W_{kind.upper()}")[index], getattr(attn, f"b_{kind.upper()}")[index]


def _keys_values(model: HookedTransformer, prefix: dict[str, Tensor], layer: int, ungroup: bool) -> dict[str, Tensor]:
    """The clean prefix's keys and values of `layer` (cached grouped), one per query head when `ungroup`."""
    names = [f"blocks.{layer}.attn.hook_{kv}" for kv in "kv"]
    if model.cfg.n_key_value_heads is None:
        return {name: prefix[name] for name in names}
    repeats = model.cfg.n_heads // model.cfg.n_key_value_heads
    cached_ungrouped = prefix[names[0]].shape[2] == model.cfg.n_heads and repeats > 1
    if ungroup == cached_ungrouped:
        return {name: prefix[name] for name in names}
    if ungroup:
        return {name: prefix[name].repeat_interleave(repeats, dim=2) for name in names}
    return {name: prefix[name][:, :, ::repeats] for name in names}


@contextmanager
def _hooked(hooks: list):
    """Forward hooks on these hook points while the context lasts."""
    try:
        for point, function in hooks:
            point.add_hook(function)
        yield
    finally:
        for point, _ in hooks:
            point.remove_hooks("fwd")


@contextmanager
def _ungrouped(model: HookedTransformer, ungroup: bool):
    """One key and value per query head (TransformerLens' ungroup_grouped_query_attention) while needed."""
    before = model.cfg.ungroup_grouped_query_attention
    model.cfg.ungroup_grouped_query_attention = ungroup
    try:
        yield
    finally:
        model.cfg.ungroup_grouped_query_attention = before
