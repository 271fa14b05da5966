"""EAP, EAP-IG and their relatives: first-order estimates of every edge's effect at once.

An edge s -> r carries sender s's output into receiver r's input. Patching it alone adds (source_s - clean_s)
to r's input, which changes the metric m (the mean logit difference at the final position) by about
grad_r . (source_s - clean_s), summed over positions. The score of an edge is minus that estimate:
m(clean) - m(edge patched), positive for an edge that carries the clean behaviour. EAP takes grad_r at the clean
run (a forward on the counterfactual prompts, then one forward and one backward on the clean ones); EAP-IG
averages grad_r over `steps` runs on a line from the counterfactual to the clean run: of the input embeddings
(`inputs`, alpha = k / steps, k = 1..steps: one step is EAP) or of each component's output (`activations`);
`clean-corrupted` averages the clean and the corrupted run's. integration.py says which runs, nodes.py turns
the same gradients into node and neuron scores. After EAP-IG's reference code (github hannamw/EAP-IG,
src/eap/attribute.py), written anew for this engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.edges import counterfactual as cf
from circuitlab.edges import integration as integrate
from circuitlab.edges import nodes
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK, edges_exposed, input_norms, logits_hook, sender_hooks, sender_parts
from circuitlab.engine.batching import memory_budget
from circuitlab.engine.forward import fast_mlps, final_logit_diff
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")


def edge_scores(
    model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, counterfactual: str, ig_steps: int | None = None,
    batch_size: int | None = None, progress: bool = False, memory_budget_mb: int | None = None,
) -> Float[Tensor, "sender receiver"]:
    """EAP (ig_steps None or 1) or EAP-IG (inputs) scores of every (sender, receiver) pair (`attribute`'s edges)."""
    integration = "inputs" if (ig_steps or 1) > 1 else "clean"
    return attribute(model, pairs, graph, counterfactual, integration, ig_steps or 1, batch_size, progress, memory_budget_mb).edges


@dataclass
class Attribution:
    """Edge scores (sender x receiver, 0 where there is no edge) and, when asked, neuron scores (sender x d_model:
    nodes.py; a node's score is its row's sum), averaged over prompts, in logit-difference units."""

    edges: Float[Tensor, "sender receiver"]
    neurons: Float[Tensor, "sender d_model"] | None = None


def attribute(
    model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, counterfactual: str, integration: str = "clean",
    steps: int = 1, batch_size: int | None = None, progress: bool = False, memory_budget_mb: int | None = None,
    neurons: bool = False,
) -> Attribution:
    """Scores of every edge with the gradients `integration` says (integration.py: clean, inputs,
    clean-corrupted, activations, activations-mib; `steps` points on each line). `batch_size` prompts per forward
    and backward (None: as many as `memory_budget_mb` holds, `prompts_per_backward`); every run of a batch runs
    before the next batch, so the memory does not grow with the steps. `neurons`: the per-dimension node scores
    too."""
    n = pairs.n_pairs
    batch_size = min(n, batch_size or prompts_per_backward(model, graph, pairs.width, memory_budget_mb, integration, neurons))
    plan = integrate.segments(graph, integration, steps)
    runs = sum(len(segment.runs) for segment in plan)
    sources = cf.prepare(model, pairs, graph, counterfactual, batch_size)
    scores = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)
    per_neuron = torch.zeros(len(graph.senders), model.cfg.d_model, dtype=torch.float64) if neurons else None
    batches = [torch.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]
    if progress:
        log.info("scoring %d edges (%s gradients): %d forward + backward(s) (%d run(s) x %d batch(es) of up to %d prompts)",
                 graph.n_edges, integration, len(batches) * runs, runs, len(batches), batch_size)
    bar = tqdm(total=len(batches) * runs, desc="edge attribution", unit="backward", disable=not progress)
    for rows in batches:
        edges, cells = _batch_scores(model, pairs, graph, sources, rows, plan, neurons, bar)
        scores += edges
        if neurons:
            per_neuron += cells
    bar.close()
    return Attribution((scores / n).float() * graph.real, None if per_neuron is None else (per_neuron / n).float())


def _batch_scores(model, pairs: PromptPairs, graph: EdgeGraph, sources: cf.Sources, rows: Tensor, plan: list[integrate.Segment],
                  neurons: bool, bar) -> tuple[Tensor, Tensor | None]:
    """Minus the sum over the batch's prompts of grad . (source - clean), per (sender, receiver) (and per sender and
    dimension when `neurons`), each segment's senders scored with its runs' mean gradient.

    The forwards are the model's own (no per-head copies of the residual stream): a head's q / k / v input gradient
    is recovered from the gradient at its query / key / value (`hook_q` ...) through W_Q^T and the norm's
    vector-Jacobian product at the cached residual stream, exactly the gradient TransformerLens' split-input hook
    would see (chain rule); an MLP's from `hook_mlp_in`; the logits' from the final residual stream."""
    device = model.cfg.device
    clean_tokens = pairs.clean_tokens[rows].to(device)
    final = pairs.final_positions[rows].to(device)
    answer, wrong = pairs.answer_tokens[rows].to(device), pairs.wrong_tokens[rows].to(device)
    source = sources.outputs(model, pairs, graph, rows)
    source_input = source[:, :, 0].clone()  # the counterfactual's input embeddings, EAP-IG's line's start (not a view)
    senders, gradient_at = set(sender_hooks(graph)), set(gradient_hooks(graph))
    residuals = {f"blocks.{layer}.hook_resid_pre" for layer in range(graph.n_layers)}
    grads: dict[str, Tensor] = {}  # this run's
    cache: dict[str, Tensor] = {}  # the clean senders' outputs
    norm_inputs: dict[str, Tensor] = {}
    starts = {f"blocks.{integrate.start_layer(graph, segment, run)}.hook_resid_pre" for segment in plan for run in segment.runs}
    clean_resid: dict[str, Tensor] = {}  # where later runs start (integrate.start_layer)
    state = {"record": True, "difference": None}

    def keep(activation: Tensor, hook) -> Tensor:
        if hook.name == INPUT_HOOK and not activation.requires_grad:  # the weights are frozen: the input is the leaf
            activation = activation.detach().requires_grad_(True)
        if hook.name in residuals:  # the norms' inputs: every run's own
            norm_inputs[hook.name] = activation.detach()
            if state["record"] and hook.name in starts:
                clean_resid[hook.name] = activation.detach()
        if state["record"] and hook.name in senders:
            cache[hook.name] = activation.detach()
        if hook.name in gradient_at:
            activation.register_hook(lambda g, name=hook.name: _accumulate(grads, name, g))
        return activation

    def summed_difference(first: int, last: int) -> Tensor:
        return state["difference"][first:last].sum(0)

    names = senders | gradient_at | residuals
    scores = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)
    cells = torch.zeros(len(graph.senders), model.cfg.d_model, dtype=torch.float64) if neurons else None
    for segment in plan:
        total: dict[str, Tensor] = {}  # the segment's gradients at the receivers' inputs, summed over its runs
        for run in segment.runs:
            hooks = [(name, keep) for name in names]
            swap = integrate.replacement(graph, run, cache.get(INPUT_HOOK), source_input, summed_difference)
            if swap is not None:
                hooks = [swap] + hooks
            grads.clear()
            start = integrate.start_layer(graph, segment, run)
            begin = {} if start == 0 else {"start_at_layer": start}  # from the clean run's residual stream there
            inputs = clean_tokens if start == 0 else clean_resid[f"blocks.{start}.hook_resid_pre"].detach().requires_grad_(True)
            with edges_exposed(model, split=False, mlp_in=True, ungroup=True), frozen_weights(model), fast_mlps(model), torch.enable_grad():
                resid = model.run_with_hooks(inputs, fwd_hooks=hooks, stop_at_layer=model.cfg.n_layers, **begin)
                final_logit_diff(model, resid, final, answer, wrong).sum().backward()
                for name, grad in _receiver_gradients(model, graph, grads, norm_inputs):
                    _accumulate(total, name, grad)
            if state["record"]:  # the first run is the clean one: its senders' outputs give the differences
                state["record"] = False
                with torch.no_grad():  # the head outputs are z x W_O: no graph through the weights
                    state["difference"] = sender_differences(source, cache, graph, model)
                del source
            bar.update(1)
        with torch.no_grad():
            difference = state["difference"]
            scores -= _contract(graph, difference, total, segment.first, segment.last) / len(segment.runs)
            if neurons:
                cells -= nodes.neuron_scores(graph, difference, total, segment.first, segment.last) / len(segment.runs)
    return scores, cells


def sender_differences(source: Tensor, cache: dict[str, Tensor], graph: EdgeGraph,
                       model: HookedTransformer) -> Float[Tensor, "sender batch pos d_model"]:
    """source - clean output of every sender, sender-major (the layout the contraction multiplies), written part by
    part (no stacked copy of the clean outputs)."""
    batch, pos, d_model = cache[INPUT_HOOK].shape
    source = source.expand(batch, pos, len(graph.senders), d_model)  # a mean or zero source is one for every prompt
    out = torch.empty(len(graph.senders), batch, pos, d_model, device=source.device, dtype=torch.float32)
    first = 0
    for part in sender_parts(cache, graph, model):
        out[first:first + part.shape[2]] = (source[:, :, first:first + part.shape[2]] - part).permute(2, 0, 1, 3)
        first += part.shape[2]
    return out


def prompts_per_backward(model: HookedTransformer, graph: EdgeGraph, width: int, memory_budget_mb: int | None,
                         integration: str = "clean", neurons: bool = False) -> int:
    """How many prompts one batch of EAP's forwards and backwards takes within the memory budget. Per prompt and
    position a batch holds: autograd's saved activations of every layer (as `engine.batching.backward_batch` counts
    them), the gradient at every receiver's input summed over the steps (one d_model vector per receiver), the
    gradients read at each layer's queries, keys, values and MLP input and the norms' inputs, and the senders'
    counterfactual outputs and their differences (d_model vectors per sender): 94.5 MB per 15-token prompt on
    SmolLM2-135M, 99 measured. Whatever the prompts, about one copy of the attention weights (grouped keys and
    values repeated per query head, the backward's copies): 160 MB there, 214 measured. Over activations the clean
    residual stream of every block is kept too (runs start there), and neuron scores sum each layer's receiver
    gradients (two d_model vectors per layer)."""
    cfg = model.cfg
    budget = memory_budget(cfg.device, memory_budget_mb) * 2**20
    autograd = cfg.n_layers * (18 * cfg.d_model + 7 * (cfg.d_mlp or 0) + 6 * cfg.n_heads * width)
    read = cfg.n_layers * (3 * cfg.n_heads * cfg.d_head + 2 * cfg.d_model)
    per_position = autograd + read + (len(graph.receivers) + 2 * len(graph.senders)) * cfg.d_model
    per_position += cfg.n_layers * cfg.d_model * (integration == "activations") + 2 * cfg.n_layers * cfg.d_model * neurons
    fixed = cfg.n_layers * 4 * cfg.d_model * cfg.n_heads * cfg.d_head * 4
    return max(1, int((budget - fixed) // (per_position * width * 4)))


def gradient_hooks(graph: EdgeGraph) -> list[str]:
    """Where the backward is read: each layer's queries, keys and values, MLP input, and the final residual stream."""
    per_layer = [f"attn.hook_{x}" for x in "qkv"] + (["hook_mlp_in"] if graph.has_mlp else [])
    return [f"blocks.{l}.{name}" for l in range(graph.n_layers) for name in per_layer] + [logits_hook(graph)]


def _receiver_gradients(model: HookedTransformer, graph: EdgeGraph, grads: dict[str, Tensor],
                        cache: dict[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """d metric / d (each head's q, k, v input before the norm), per layer as (batch, pos, head, d_model); the MLP
    inputs' and the final residual stream's as they were read. One at a time (the caller sums each into its total
    before the next is made)."""
    yield from ((name, grads[name]) for name in grads if not name.endswith(("hook_q", "hook_k", "hook_v")))
    for layer in range(graph.n_layers):
        block = model.blocks[layer]
        weights = {"q": block.attn.W_Q, "k": block.attn.W_K, "v": block.attn.W_V}
        for x in "qkv":
            grad = grads.get(f"blocks.{layer}.attn.hook_{x}")
            if grad is None:
                continue
            normalized = torch.einsum("bphe,hde->bphd", grad, weights[x])  # d metric / d ln1(input), per head
            yield f"blocks.{layer}.hook_{x}_input", norm_vjp(input_norms(model, layer)[0], cache[f"blocks.{layer}.hook_resid_pre"], normalized)


def norm_vjp(norm, x: Float[Tensor, "batch pos d_model"], cotangent: Float[Tensor, "batch pos k d_model"]) -> Tensor:
    """cotangent^T d norm(x) / dx at every position, for k cotangents per position. TransformerLens' norms in closed
    form (one Jacobian per position, shared by the k cotangents); any other module through its own autograd."""
    kind = type(norm).__name__
    if kind in ("LayerNorm", "LayerNormPre", "RMSNorm", "RMSNormPre"):
        x = x.float()[:, :, None]
        if "LayerNorm" in kind:
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
        normalized = x / scale
        v = cotangent.float() * (norm.w.float() if hasattr(norm, "w") else 1.0)
        projected = v - normalized * (v * normalized).mean(-1, keepdim=True)
        if "LayerNorm" in kind:
            projected = projected - v.mean(-1, keepdim=True)
        return (projected / scale).to(cotangent.dtype)
    if isinstance(norm, torch.nn.Identity):
        return cotangent
    with torch.enable_grad():
        copies = x.detach()[:, :, None].expand_as(cotangent).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(norm(copies), copies, cotangent)
    return grad


@contextmanager
def frozen_weights(model: HookedTransformer):
    """No weight gradients while the backward runs (only the activations' are read)."""
    before = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in before:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in before:
            p.requires_grad_(flag)


def _accumulate(grads: dict[str, Tensor], name: str, grad: Tensor) -> None:
    grads[name] = grad if name not in grads else grads[name] + grad


def _contract(graph: EdgeGraph, difference: Float[Tensor, "sender batch pos d_model"], grads: dict[str, Tensor],
              first: int = 0, last: int | None = None) -> Tensor:
    """sum over prompts and positions of grad_r . difference_s for every (sender, receiver), senders first..last-1
    (the other rows 0): one matmul per layer of those senders before it against all of its receivers (pairs
    that are not edges are masked by the caller)."""
    last = len(graph.senders) if last is None else last
    scores = torch.zeros(len(graph.senders), len(graph.receivers), dtype=torch.float64)
    _, batch, pos, d_model = difference.shape
    senders = difference.reshape(len(graph.senders), -1)  # sender x (batch pos d_model)
    zeros = lambda *shape: torch.zeros(batch, pos, *shape, device=difference.device)  # noqa: E731  (no gradient reached it)
    for layer in range(graph.n_layers):
        start = layer * graph.per_layer_receivers
        fed = min(last, max(graph.feeding(r) for r in range(start, start + graph.per_layer_receivers)))
        if fed <= first:  # no sender of these rows feeds this layer
            continue
        columns = [grads.get(f"blocks.{layer}.hook_{x}_input", zeros(graph.n_heads, d_model)).float().permute(0, 1, 3, 2) for x in "qkv"]
        if graph.has_mlp:
            columns.append(grads.get(f"blocks.{layer}.hook_mlp_in", zeros(d_model)).float()[..., None])
        block = torch.cat(columns, -1).reshape(senders.shape[1], -1)
        scores[first:fed, start:start + block.shape[1]] = (senders[first:fed] @ block).double()
    final = grads.get(f"blocks.{graph.n_layers - 1}.hook_resid_post", zeros(d_model)).float().reshape(-1, 1)
    scores[first:last, graph.logits_receiver] = (senders[first:last] @ final).double()[:, 0]
    return scores
