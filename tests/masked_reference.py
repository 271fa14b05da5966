"""The masked forward as it was before the block-by-block one (circuitlab/edges/masked.py up to commit 8f3c0f8), kept
as a reference for the tests and as the "before" of bench/circuit_discovery.py: TransformerLens' split q / k / v inputs
(one residual copy per head and q / k / v at every layer), and at every receiver a batched matmul of the circuits'
ablation weights against every feeding sender's difference (source - current output, recorded in the same run).
All prompts and circuits in one forward (no memory budget).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed, head_outputs, logits_hook
from circuitlab.edges.masked import unchanged_before
from circuitlab.engine.forward import fast_mlps, final_logit_diff, frozen_prefix
from circuitlab.tasks.base import PromptPairs


def circuits_logit_diff(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, sources: cf.Sources,
                        keep: Tensor) -> Tensor:
    """The mean logit difference of each circuit of `keep` (circuit, sender, receiver), in one forward."""
    start = unchanged_before(pairs, sources)
    rows = torch.arange(pairs.n_pairs)
    part = sources.outputs(model, pairs, graph, rows, start)
    prefix = clean_prefix(model, pairs, rows) if start else None
    return _masked(model, pairs, graph, part, keep.to(model.cfg.device), rows, start, prefix)


def clean_prefix(model: HookedTransformer, pairs: PromptPairs, rows: Tensor) -> dict[str, Tensor]:
    """The clean run of the prompts `rows` as the masked forward's blocks see it (one key and value per query head):
    the input to block 0 and every layer's keys and values."""
    names = {INPUT_HOOK} | {f"blocks.{layer}.attn.hook_{kv}" for layer in range(model.cfg.n_layers) for kv in "kv"}
    with torch.no_grad(), edges_exposed(model, split=False, ungroup=True), fast_mlps(model):
        _, cache = model.run_with_cache(pairs.clean_tokens[rows].to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=model.cfg.n_layers)
    return dict(cache.items())


def _masked(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, source: Tensor, keep: Tensor, rows: Tensor,
            start: int = 0, prefix: dict[str, Tensor] | None = None) -> Tensor:
    """The mean logit difference of the prompts `rows` under each circuit of `keep`, in one forward over the
    positions from `start` on (the earlier ones from `prefix`, the clean run's; `source`: the counterfactual
    outputs at those positions).

    The differences are kept sender-major, (circuit, sender, prompt, position, d_model), so that a receiver's
    update is one batched matmul of its circuits' ablation weights against the contiguous block of the senders
    feeding it, with no copy of that block."""
    device, dtype = model.cfg.device, model.cfg.dtype
    copies, n, width, d_model, n_senders = keep.shape[0], len(rows), pairs.width - start, model.cfg.d_model, len(graph.senders)
    ablate = (~keep).to(dtype)  # circuit sender receiver
    source = source.to(device=device, dtype=dtype).expand(n, width, n_senders, d_model).permute(2, 0, 1, 3)  # sender-major
    differences = torch.zeros(copies, n_senders, n, width, d_model, device=device, dtype=dtype)

    def store(first: int, current: Tensor) -> None:
        """current: (circuit, sender, prompt, position, d_model) of senders first, first + 1, ..."""
        differences[:, first:first + current.shape[1]] = source[None, first:first + current.shape[1]] - current

    def record_stream(first: int):
        def hook(activation: Tensor, hook) -> Tensor:
            store(first, activation.view(copies, 1, n, width, d_model))
            return activation
        return hook

    def record_heads(layer: int, first: int):
        def hook(z: Tensor, hook) -> Tensor:
            outputs = head_outputs(model, layer, z).view(copies, n, width, graph.n_heads, d_model)
            store(first, outputs.permute(0, 3, 1, 2, 4))
            return z
        return hook

    def construct(receivers: slice | int, fed: int, per_head: bool):
        def hook(activation: Tensor, hook) -> Tensor:
            weights = ablate[:, :fed, receivers].reshape(copies, fed, -1)  # circuit sender receiver
            update = torch.bmm(weights.transpose(1, 2), differences[:, :fed].reshape(copies, fed, -1))  # circuit receiver (b p d)
            update = update.view(copies, -1, n, width, d_model).permute(0, 2, 3, 1, 4)  # circuit b p receiver d
            return activation + (update if per_head else update[:, :, :, 0]).reshape(activation.shape)
        return hook

    hooks = [(INPUT_HOOK, record_stream(0))]
    for layer in range(graph.n_layers):
        for x in "qkv":
            first = graph.head_receiver(layer, x, 0)
            hooks.append((f"blocks.{layer}.hook_{x}_input", construct(slice(first, first + graph.n_heads), graph.feeding(first), True)))
        hooks.append((f"blocks.{layer}.attn.hook_z", record_heads(layer, graph.head_sender(layer, 0))))
        if graph.has_mlp:
            receiver = graph.mlp_receiver(layer)
            hooks.append((f"blocks.{layer}.hook_mlp_in", construct(receiver, graph.feeding(receiver), False)))
            hooks.append((f"blocks.{layer}.hook_mlp_out", record_stream(graph.mlp_sender(layer))))
    hooks.append((logits_hook(graph), construct(graph.logits_receiver, n_senders, False)))
    final = pairs.final_positions[rows].to(device).repeat(copies) - start
    answer, wrong = pairs.answer_tokens[rows].to(device), pairs.wrong_tokens[rows].to(device)
    with torch.no_grad(), edges_exposed(model, result=False), fast_mlps(model):
        if prefix is None:
            tokens = pairs.clean_tokens[rows].to(device).repeat(copies, 1)
            resid = model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
        else:
            resid = prefix[INPUT_HOOK][:, start:].repeat(copies, 1, 1)
            with model.hooks(fwd_hooks=hooks):
                for layer, block in enumerate(model.blocks):
                    resid = block(resid, past_kv_cache_entry=frozen_prefix(model, prefix, layer, start, copies))
        values = final_logit_diff(model, resid, final, answer.repeat(copies), wrong.repeat(copies))
    return values.view(copies, n).mean(1).float().cpu()
