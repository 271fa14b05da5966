"""Exact edge patching: the metric with one edge alone carrying its counterfactual value, many edges per forward.

Patching edge s -> r adds (source_s - clean_s) to receiver r's input and nothing else. Every row block of a
batched forward patches one edge (the auto-circuit / EAP-IG evaluation trick), and the forward is as short as the
edge allows:
- it starts at the receiver's block, from the clean run's residual stream there;
- it computes only positions from the first one where clean and corrupted prompts differ (the senders' outputs
  are equal before it; earlier keys and values come from the clean run), for the `patching` counterfactual;
- the last block runs at the final position only, and only the final position's answer and wrong logits are
  computed;
- an edge into the logits needs no block at all.
Edges are grouped by receiver block and cut into chunks that fit the memory budget; each chunk is stored as it
finishes (`engine/chunks.py`), so a rerun resumes and `sweep.num_shards` splits the edges.
"""

from __future__ import annotations

import itertools
import logging

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import attention_output_norm, edges_exposed, heads_share_qk_norm, input_norms, sender_hooks, stack_senders
from circuitlab.engine import chunks
from circuitlab.engine.batching import halving_on_oom, points_per_chunk
from circuitlab.engine.forward import fast_mlps, final_logit_diff, frozen_prefix, last_block_final_row
from circuitlab.engine.sweep import first_difference
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")


def patch_edges(
    model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, counterfactual: str, edges: list[tuple[int, int]],
    memory_budget_mb: int | None = None, progress: bool = False,
) -> tuple[Float[Tensor, " edge"], float]:
    """The mean logit difference with each edge patched alone (NaN for edges another shard computes), and the
    clean one."""
    device = model.cfg.device
    n_layers = model.cfg.n_layers
    final = pairs.final_positions.to(device)
    answer, wrong = pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)
    wanted = set(sender_hooks(graph)) | {f"blocks.{l}.hook_resid_pre" for l in range(n_layers)}
    wanted |= {f"blocks.{l}.attn.hook_{kv}" for l in range(n_layers) for kv in "kvz"} | {f"blocks.{l}.hook_attn_out" for l in range(n_layers)}
    wanted |= {f"blocks.{l}.attn.hook_q" for l in range(n_layers)} if heads_share_qk_norm(model) else set()  # _patched_block's
    with torch.no_grad(), edges_exposed(model, split=False), fast_mlps(model):
        resid, cache = model.run_with_cache(pairs.clean_tokens.to(device), names_filter=lambda n: n in wanted, stop_at_layer=n_layers)
        clean_ld = final_logit_diff(model, resid, final, answer, wrong).mean().item()
        clean = stack_senders(cache, graph, model)
        sources = cf.prepare(model, pairs, graph, counterfactual, pairs.n_pairs)
        difference = sources.outputs(model, pairs, graph) - clean
        start = first_difference(pairs) if counterfactual == "patching" else 0
        start = min(start, pairs.width - 1)
        results = torch.full((len(edges),), float("nan"))
        chunk = points_per_chunk(model, pairs.n_pairs, pairs.width - start, memory_budget_mb)
        call = f"edge_patching:{counterfactual}"
        if progress:
            log.info("patching %d edges (up to %d per forward, by receiver block) over positions %d-%d of %d prompts", len(edges),
                     min(chunk, len(edges)), start, pairs.width - 1, pairs.n_pairs)
        bar = tqdm(total=len(edges), desc="edge patching", unit="edge", disable=not progress)
        order = sorted(range(len(edges)), key=lambda i: (graph.receiver_layer(edges[i][1]), i))
        for block, group in itertools.groupby(order, key=lambda i: graph.receiver_layer(edges[i][1])):
            group = list(group)
            size = len(group) if block == n_layers else chunk
            for part in [group[i:i + size] for i in range(0, len(group), size)]:
                def compute(points: list[int], block=block) -> dict[str, Tensor]:
                    chosen = [edges[j] for j in points]
                    if block == n_layers:
                        patched = (resid[None] + torch.stack([difference[:, :, s] for s, _ in chosen])).flatten(0, 1)
                        final_index = final.repeat(len(chosen))
                    else:
                        patched, final_index = _from_block(model, graph, block, start, cache, difference, chosen, final, pairs.same_length)
                    copies = len(chosen)
                    values = final_logit_diff(model, patched, final_index, answer.repeat(copies), wrong.repeat(copies))
                    return {"logit_diff": values.view(copies, pairs.n_pairs).mean(1)}

                keys = chunks.point_keys(call, [graph.edge_name(*edges[j]) for j in part])
                found = chunks.compute_or_load(keys, lambda part=part: halving_on_oom(compute, part))
                if found is not None:
                    results[part] = found["logit_diff"].cpu()
                bar.update(len(part))
        bar.close()
    return results, clean_ld


def _from_block(model: HookedTransformer, graph: EdgeGraph, block: int, start: int, cache, difference: Tensor,
                chosen: list[tuple[int, int]], final: Tensor, same_length: bool) -> tuple[Float[Tensor, "rows pos d_model"], Tensor]:
    """The final residual stream of len(chosen) row blocks, block b patching edge chosen[b], from `block` on, and
    where each row's final position is in it."""
    cfg = model.cfg
    copies = len(chosen)
    resid = _patched_block(model, graph, block, start, cache, difference, chosen)
    last = cfg.n_layers - 1
    for layer in range(block + 1, cfg.n_layers):
        prefix = frozen_prefix(model, cache, layer, start, copies)
        if layer == last and same_length:
            resid = last_block_final_row(model, resid, prefix)
        else:
            resid = model.blocks[layer](resid, past_kv_cache_entry=prefix)
    if resid.shape[1] == 1:
        return resid, torch.zeros_like(final.repeat(copies))
    return resid, final.repeat(copies) - start


def _patched_block(model: HookedTransformer, graph: EdgeGraph, block: int, start: int, cache, difference: Tensor,
                   chosen: list[tuple[int, int]]) -> Float[Tensor, "rows pos d_model"]:
    """The receivers' block, row block c with edge chosen[c]: its query, key or value input (or its MLP input)
    gets the sender's difference added. The attention runs once on the patched q / k / v inputs (row blocks
    without a q patch take the clean one, and so on); only the receiving head's output is kept from it, every
    other head keeps its clean output (cached), so no per-head copy of the residual stream is ever made. Post-norm
    blocks normalise the changed attention output as a whole (`hooks.attention_output_norm`); where the heads share
    one query / key norm (OLMo-2) the other heads keep their clean queries, keys and values before it and every
    head's output change is kept."""
    layer = model.blocks[block]
    attn_norm, mlp_norm = input_norms(model, block)
    post_norm, joint = attention_output_norm(model, block), heads_share_qk_norm(model)
    n = difference.shape[0]
    copies = len(chosen)
    x = cache[f"blocks.{block}.hook_resid_pre"][:, start:]
    tail = difference[:, start:]
    added = {kind: torch.zeros(copies, *x.shape, device=x.device, dtype=x.dtype) for kind in ("q", "k", "v", "mlp")}
    heads = torch.zeros(copies, dtype=torch.long)
    patches_head = torch.zeros(copies, dtype=torch.bool)
    for c, (s, r) in enumerate(chosen):
        kind, head = graph.receiver_kind(r)
        added[kind][c] = tail[:, :, s]
        if head is not None:
            heads[c], patches_head[c] = head, True
    rows = lambda t: t.flatten(0, 1)  # noqa: E731  copies x batch -> rows
    x_rows = x.repeat(copies, 1, 1)
    attn_out = cache[f"blocks.{block}.hook_attn_out"][:, start:].repeat(copies, 1, 1)
    if patches_head.any():
        captured = {}

        def keep_z(z: Tensor, hook) -> Tensor:
            captured["z"] = z
            return z

        normalized = {kind: attn_norm(x_rows + rows(added[kind])) for kind in ("q", "k", "v")}
        hooks = [(f"blocks.{block}.attn.hook_z", keep_z)]
        if joint:
            hooks += _receiving_head_only(cache, block, start, heads, copies)
        with model.hooks(fwd_hooks=hooks):
            layer.attn(query_input=normalized["q"], key_input=normalized["k"], value_input=normalized["v"],
                       past_kv_cache_entry=frozen_prefix(model, cache, block, start, copies))
        z_new = captured["z"].view(copies, n, *captured["z"].shape[1:])  # copies batch pos head d_head
        heads = heads.to(z_new.device)
        z_clean = cache[f"blocks.{block}.attn.hook_z"][:, start:]  # batch pos head d_head
        if joint:  # every head's output moves with the shared query / key norm
            change = rows(torch.einsum("cbphe,hed->cbpd", z_new - z_clean, layer.attn.W_O))
        else:
            receiving_new = z_new[torch.arange(copies, device=z_new.device), :, :, heads]  # copies batch pos d_head
            receiving_clean = z_clean[:, :, heads].permute(2, 0, 1, 3)
            change = (receiving_new - receiving_clean) * patches_head.to(z_new.device)[:, None, None, None]
            change = rows(torch.einsum("cbpe,ced->cbpd", change, layer.attn.W_O[heads]))
        if post_norm is None:
            attn_out = attn_out + change
        else:  # the whole attention output, changed, through the norm after it
            clean_raw = torch.einsum("bphe,hed->bpd", z_clean, layer.attn.W_O) + layer.attn.b_O
            attn_out = post_norm(clean_raw.repeat(copies, 1, 1) + change)
    if graph.has_mlp:
        mlp_reads = x_rows if model.cfg.parallel_attn_mlp else x_rows + attn_out
        mlp_out = layer.apply_mlp(mlp_norm(mlp_reads + rows(added["mlp"])))
        return x_rows + attn_out + mlp_out
    return x_rows + attn_out


def _receiving_head_only(cache, block: int, start: int, heads: Tensor, copies: int) -> list:
    """Hooks on the queries, keys and values of `block` (before OLMo-2's norms over all heads) that give every head
    but row block c's receiving head (`heads[c]`) its clean value: the patched q / k / v input reaches that head alone,
    as TransformerLens' split-input hook gives it."""
    def restore(x: str):
        def hook(activation: Tensor, hook) -> Tensor:
            clean = cache[f"blocks.{block}.attn.hook_{x}"][:, start:]
            mine = torch.zeros(copies, 1, 1, activation.shape[2], 1, dtype=torch.bool, device=activation.device)
            mine[torch.arange(copies), 0, 0, heads.to(activation.device)] = True
            return torch.where(mine, activation.view(copies, *clean.shape), clean[None]).view_as(activation)
        return hook

    return [(f"blocks.{block}.attn.hook_{x}", restore(x)) for x in "qkv"]
