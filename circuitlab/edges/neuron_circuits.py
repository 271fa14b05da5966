"""Neuron circuits and MIB's neuron-level faithfulness curve.

A neuron is one dimension of a sender's output (the input, a head, an MLP: d_model each). A neuron circuit keeps
some of them: a kept dimension carries the sender's output as the circuit's run computes it, every other dimension
the sender's counterfactual output, on every edge out of the sender (EAP-IG's `Graph.apply_topn(level='neuron')`
turns the kept neurons' nodes on with all their outgoing edges and `evaluate_graph` ablates the other neurons;
github hannamw/EAP-IG, src/eap/graph.py and evaluate.py; MIB's `evaluate_area_under_curve(level='neuron')`,
github hannamw/MIB-circuit-track, MIB_circuit_track/evaluation.py). Since an ablated dimension is ablated on every
edge out of it, a neuron circuit is one forward in which each sender's output is mixed, dimension by dimension,
from its output in that run and its counterfactual one: at `hook_resid_pre` of block 0 (the input), at
`hook_attn_out` (the layer's heads, each head's output from this run's `hook_z` through hooks.head_outputs) and at
`hook_mlp_out`. Many circuits per forward, prompts x circuits rows.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed, head_outputs
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import final_logit_diff
from circuitlab.tasks.base import PromptPairs


def circuits_per_forward(model: HookedTransformer, n_prompts: int, width: int, memory_budget_mb: int | None) -> int:
    """Circuits one forward holds: a block's activations are about 140 d_model vectors per row and position (the
    masked forward's measured count), rows = prompts x circuits."""
    row = width * 140 * model.cfg.d_model * 4
    return max(1, int(memory_budget(model.cfg.device, memory_budget_mb) * 2**20 // (row * n_prompts)))


def neuron_circuits_logit_diff(
    model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, sources: cf.Sources,
    keep: Bool[Tensor, "circuit sender d_model"], memory_budget_mb: int | None = None,
) -> Float[Tensor, " circuit"]:
    """The mean logit difference of each neuron circuit (every kept dimension of a sender's output as its run
    computes it, the others at the counterfactual)."""
    chunk = circuits_per_forward(model, pairs.n_pairs, pairs.width, memory_budget_mb)
    source = sources.outputs(model, pairs, graph)  # (prompts or 1, pos, sender, d_model)
    values = [_chunk(model, pairs, graph, source, keep[i:i + chunk]) for i in range(0, len(keep), chunk)]
    return torch.cat(values)


def _chunk(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, source: Tensor, keep: Tensor) -> Tensor:
    device = model.cfg.device
    circuits, n = len(keep), pairs.n_pairs
    kept = keep.to(device=device, dtype=model.cfg.dtype)[:, None, None]  # circuit 1 1 sender d_model
    source = source.to(model.cfg.dtype)[None]  # 1 prompts|1 pos sender d_model
    z: dict[int, Tensor] = {}

    def rows(activation: Tensor) -> Tensor:  # (circuits x prompts) ... -> circuits prompts ...
        return activation.view(circuits, n, *activation.shape[1:])

    def mix(sender: int):  # the input's or an MLP's output, dimension by dimension
        def hook(activation: Tensor, hook) -> Tensor:
            m, s = kept[..., sender, :], source[..., sender, :]
            return (rows(activation) * m + s * (1 - m)).view_as(activation)
        return hook

    def record(activation: Tensor, hook) -> Tensor:
        z[int(hook.name.split(".")[1])] = activation
        return activation

    def heads(layer: int):
        first = graph.head_sender(layer, 0)

        def hook(activation: Tensor, hook) -> Tensor:
            outputs = rows(head_outputs(model, layer, z.pop(layer)))  # circuits prompts pos head d_model
            m, s = kept[..., first:first + graph.n_heads, :], source[..., first:first + graph.n_heads, :]
            return activation - ((1 - m) * (outputs - s)).sum(-2).view_as(activation)
        return hook

    hooks = [(INPUT_HOOK, mix(0))]
    for layer in range(graph.n_layers):
        hooks += [(f"blocks.{layer}.attn.hook_z", record), (f"blocks.{layer}.hook_attn_out", heads(layer))]
        if graph.has_mlp:
            hooks.append((f"blocks.{layer}.hook_mlp_out", mix(graph.mlp_sender(layer))))
    tokens = pairs.clean_tokens.to(device).repeat(circuits, 1)
    repeat = lambda t: t.to(device).repeat(circuits)  # noqa: E731
    with torch.no_grad(), edges_exposed(model, split=False, mlp_in=False, ungroup=False):
        resid = model.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers)
        diff = final_logit_diff(model, resid, repeat(pairs.final_positions), repeat(pairs.answer_tokens), repeat(pairs.wrong_tokens))
    return diff.view(circuits, n).mean(1).float().cpu()


def top_neurons(scores: Float[Tensor, "sender d_model"], n: int, absolute: bool) -> Bool[Tensor, "sender d_model"]:
    """The n neurons of largest score (|score| when `absolute`), as EAP-IG's `apply_topn(level='neuron')` ranks them."""
    values = (scores.abs() if absolute else scores).reshape(-1)
    keep = torch.zeros(values.numel(), dtype=torch.bool)
    keep[torch.argsort(values, descending=True, stable=True)[:n]] = True
    return keep.view_as(scores)


def neuron_curve(scores: Tensor, percentages: list[float], evaluate, empty: float, full: float):
    """MIB's curve over neurons: at each percentage the top int(fraction x neurons) by signed score (CPR) or
    |score| (CMD). `evaluate(keep) -> logit differences`. (neuron_faithfulness.csv, {neuron_cpr, neuron_cmd})."""
    import pandas as pd

    from circuitlab.edges.circuits import curve_areas
    from circuitlab.metrics import usable_gap

    labels, masks = [], []
    for ranking, absolute in (("signed", False), ("absolute", True)):
        for percent in percentages:
            n = int(percent / 100 * scores.numel())
            labels.append((ranking, percent, n))
            masks.append(top_neurons(scores, n, absolute))
    values = evaluate(torch.stack(masks)).tolist()
    gap = usable_gap(full, empty)
    table = pd.DataFrame([{"ranking": ranking, "percent": percent, "neurons_kept": n, "logit_diff": value, "faithfulness": (value - empty) / gap}
                          for (ranking, percent, n), value in zip(labels, values)])
    cpr, cmd = curve_areas(percentages, table)
    number = lambda v: None if v != v else v  # noqa: E731  (NaN: null in the manifest)
    return table, {"neuron_cpr": number(cpr), "neuron_cmd": number(cmd)}
