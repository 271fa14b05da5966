"""A forward in which every edge outside a circuit carries its counterfactual value, many circuits per forward.

Row block c of the batch runs circuit c. Each sender's hook records (source - current output) in this very run
(its output changes when edges upstream of it are ablated); each receiver's hook adds, over the senders feeding it,
the recorded difference of every edge the circuit leaves out. So an edge in the circuit carries the sender's
output as the circuit computes it, and an edge outside it the sender's counterfactual output (as EAP-IG's and
MIB's evaluation). The empty circuit is the counterfactual run itself; the full one is the clean run.

With the `patching` counterfactual, every sender's counterfactual output equals its clean one before the first
position where a clean prompt differs from its corrupted twin, so every circuit's run equals the clean run there:
the forwards compute only the later positions, attending to the clean run's keys and values of the earlier ones.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed, head_outputs, logits_hook
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import fast_mlps, final_logit_diff, frozen_prefix
from circuitlab.engine.sweep import first_difference
from circuitlab.tasks.base import PromptPairs


def circuits_logit_diff(
    model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, sources: cf.Sources,
    keep: Bool[Tensor, "circuit sender receiver"], memory_budget_mb: int | None = None, progress: bool = False,
) -> tuple[Float[Tensor, " circuit"], int]:
    """The mean logit difference of each circuit, and the number of masked forwards it took: as many circuits
    per forward as the memory budget holds (all prompts at once unless they alone exceed it; the counterfactual
    outputs of a batch's prompts count in it). `progress`: a bar over the masked forwards' blocks (forwards x
    layers), moved at each block."""
    device = model.cfg.device
    start = unchanged_before(pairs, sources)
    budget = memory_budget(device, memory_budget_mb) * 2**20
    cfg, width = model.cfg, pairs.width - start
    # bytes per prompt and circuit: the senders' differences, and a block's own activations (each head's q / k / v
    # input, their norms and updates: about 12 per head, measured ~140 d_model vectors per row on SmolLM2-135M)
    per_prompt = width * (len(graph.senders) + 12 * graph.n_heads + 32) * cfg.d_model * 4
    # bytes per prompt whatever the circuits: its counterfactual outputs (at the positions computed) and the clean
    # prefix's keys and values (one per query head)
    source = width * len(graph.senders) * cfg.d_model * 4 if sources.kind == "patching" else 0
    shared = source + (pairs.width * (cfg.d_model + 2 * cfg.n_layers * cfg.n_heads * cfg.d_head) * 4 if start else 0)
    prompts = max(1, min(pairs.n_pairs, int(budget // (per_prompt + shared))))  # prompts per forward (all, unless too many)
    copies = max(1, int((budget - shared * prompts) // (per_prompt * prompts)))  # circuits per forward
    totals, forwards = torch.zeros(keep.shape[0], dtype=torch.float64), 0
    batches = range(0, pairs.n_pairs, prompts)
    planned = len(batches) * -(-keep.shape[0] // copies)
    desc = f"{keep.shape[0]} circuits, {planned} masked forward{'s' * (planned > 1)}"
    bar = tqdm(total=planned * model.cfg.n_layers, desc=desc, unit="block", disable=not progress)  # moved at every block
    for first_prompt in batches:
        rows = torch.arange(first_prompt, min(pairs.n_pairs, first_prompt + prompts))
        part = sources.outputs(model, pairs, graph, rows, start)  # this batch's (a mean or zero source: one for all)
        prefix = clean_prefix(model, pairs, rows) if start else None
        for first in range(0, keep.shape[0], copies):
            block = keep[first:first + copies].to(device)
            totals[first:first + copies] += _masked(model, pairs, graph, part, block, rows, start, prefix, bar).double() * len(rows)
            forwards += 1
    bar.close()
    return (totals / pairs.n_pairs).float(), forwards


def unchanged_before(pairs: PromptPairs, sources: cf.Sources) -> int:
    """The positions every circuit's run shares with the clean run: those before the first difference of the
    prompts under the `patching` counterfactual (at most up to the earliest final position), else none."""
    if sources.kind != "patching":
        return 0
    return min(first_difference(pairs), int(pairs.final_positions.min()))


def clean_prefix(model: HookedTransformer, pairs: PromptPairs, rows: Tensor) -> dict[str, Tensor]:
    """The clean run of the prompts `rows` as the masked forward's blocks see it (one key and value per query head):
    the input to block 0 and every layer's keys and values."""
    names = {INPUT_HOOK} | {f"blocks.{layer}.attn.hook_{kv}" for layer in range(model.cfg.n_layers) for kv in "kv"}
    with torch.no_grad(), edges_exposed(model, split=False, ungroup=True), fast_mlps(model):
        _, cache = model.run_with_cache(pairs.clean_tokens[rows].to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=model.cfg.n_layers)
    return dict(cache.items())


def _masked(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, source: Tensor, keep: Tensor, rows: Tensor,
            start: int = 0, prefix: dict[str, Tensor] | None = None, bar=None) -> Tensor:
    """The mean logit difference of the prompts `rows` under each circuit of `keep`, in one forward over the
    positions from `start` on (the earlier ones from `prefix`, the clean run's; `source`: the counterfactual
    outputs at those positions). `bar`: moved by one at each block.

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
    if bar is not None:
        def block_done(activation: Tensor, hook) -> Tensor:
            bar.update(1)
            return activation

        hooks += [(f"blocks.{layer}.hook_resid_post", block_done) for layer in range(graph.n_layers)]
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
