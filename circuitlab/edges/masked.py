"""A forward in which every edge outside a circuit carries its counterfactual value, many circuits per forward.

Row block c of the batch runs circuit c. Every sender's difference (source - current output) is taken in this very
run (its output changes when edges upstream of it are ablated), and each receiver reads the residual stream plus
the differences of the edges the circuit leaves out. So an edge in the circuit carries the sender's output as the
circuit computes it, and an edge outside it the sender's counterfactual output (as EAP-IG's and MIB's evaluation).
The empty circuit is the counterfactual run itself; the full one is the clean run.

The forward runs block by block over the model's own modules (`masked_forward`), building each receiver's input
from whichever is fewer, its kept or its ablated senders, and a layer's q / k / v inputs from one shared input
except for the heads whose input differs (`masked_plan`): no per-head copy of the residual stream where a layer's
heads all read the same. With the `patching` counterfactual, every sender's counterfactual output equals its clean
one before the first position where a clean prompt differs from its corrupted twin, so every circuit's run equals the
clean run there: the forwards compute only the later positions, attending to the clean run's keys and values of the
earlier ones; the logits are read at the final position only.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges import masked_plan
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed
from circuitlab.edges.masked_forward import Run
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import fast_mlps, final_logit_diff
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
    """The clean run of the prompts `rows` as the masked forward's blocks see it: the input to block 0 and every
    layer's keys and values (one per key-value head)."""
    names = {INPUT_HOOK} | {f"blocks.{layer}.attn.hook_{kv}" for layer in range(model.cfg.n_layers) for kv in "kv"}
    with torch.no_grad(), edges_exposed(model, split=False), fast_mlps(model):
        _, cache = model.run_with_cache(pairs.clean_tokens[rows].to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=model.cfg.n_layers)
    return dict(cache.items())


def _masked(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, source: Tensor, keep: Tensor, rows: Tensor,
            start: int = 0, prefix: dict[str, Tensor] | None = None, bar=None) -> Tensor:
    """The mean logit difference of the prompts `rows` under each circuit of `keep`, in one forward over the
    positions from `start` on (the earlier ones from `prefix`, the clean run's; `source`: the counterfactual
    outputs at those positions), block by block (`masked_forward.Run`, as `masked_plan.plan` says). `bar`: moved by
    one at each block."""
    device, dtype = model.cfg.device, model.cfg.dtype
    copies = keep.shape[0]
    final = pairs.final_positions[rows].to(device) - start
    answer, wrong = pairs.answer_tokens[rows].to(device), pairs.wrong_tokens[rows].to(device)
    with torch.no_grad(), edges_exposed(model, split=False, result=False), fast_mlps(model):
        if prefix is None:
            embed = model(pairs.clean_tokens[rows].to(device), stop_at_layer=0)
        else:
            embed = prefix[INPUT_HOOK][:, start:]
        run = Run(model, graph, masked_plan.plan(graph, keep), source.to(device=device, dtype=dtype), embed, copies)
        for layer in range(graph.n_layers):
            run.block(layer, prefix, start)
            if bar is not None:
                bar.update(1)
        values = final_logit_diff(model, run.final_inputs(final), torch.zeros(copies * len(rows), dtype=torch.long, device=device),
                                  answer.repeat(copies), wrong.repeat(copies))
    return values.view(copies, len(rows)).mean(1).float().cpu()
