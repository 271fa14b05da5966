"""Plain references for the EAP-family scorers (EAP-IG over inputs and activations, clean-corrupted, node and
neuron scores), written without circuitlab's edge engine: TransformerLens' own per-head result and split q / k / v
/ MLP-input hook points, weights left differentiable, one forward + backward per gradient run, the scores summed
edge by edge in Python. Follows EAP-IG's reference code (github hannamw/EAP-IG, src/eap/attribute.py and
attribute_node.py) run by run; tests/test_edge_scorers.py compares circuitlab against it.

A run is (component, alpha): component 0 the input (`blocks.0.hook_resid_pre`), then each layer's attention
(`attn.hook_result`, every head at once; `hook_attn_out` in post-norm blocks) and MLP (`hook_mlp_out`); the
component's output is replaced by the constant alpha x clean + (1 - alpha) x source (a leaf: its gradient is read,
none flows into the component). The run ("corrupted", None) is the plain forward of the corrupted prompts. Senders'
outputs as tests/edge_reference.py defines them (post-norm heads: their shares of the normalised attention output).
"""

from __future__ import annotations

import torch
from transformer_lens import HookedTransformer

from circuitlab.metrics import logit_diff
from tests.edge_reference import FLAGS, exposed, post_norm, receiver_hook, recorded, restore, sender_hook, sender_value


def component_of(sender: str, has_mlp: bool = True) -> int:
    if sender == "input":
        return 0
    layer = int(sender[1:].split(".")[0])
    return 1 + layer * (1 + has_mlp) + (1 if sender.startswith("m") else 0)


def component_hooks(model: HookedTransformer) -> list[str]:
    """Where each component's output is replaced: the input, each layer's per-head results (in post-norm blocks the
    normalised attention output `hook_attn_out`, the sum of the heads' shares), each MLP's output."""
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(model.cfg.n_layers):
        names.append(f"blocks.{layer}.hook_attn_out" if post_norm(model, layer) else f"blocks.{layer}.attn.hook_result")
        if not model.cfg.attn_only:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def sender_names(model: HookedTransformer) -> list[str]:
    senders = ["input"]
    for layer in range(model.cfg.n_layers):
        senders += [f"a{layer}.h{h}" for h in range(model.cfg.n_heads)] + ([] if model.cfg.attn_only else [f"m{layer}"])
    return senders


def output_gradient_hook(model: HookedTransformer, sender: str) -> tuple[str, int | None]:
    """Where the gradient at a sender's output is read: its own hook; a post-norm head's share enters the stream
    inside `hook_attn_out`, so its gradient is that hook's."""
    hook, head = sender_hook(sender)
    if head is not None and post_norm(model, int(hook.split(".")[1])):
        return hook.replace("attn.hook_result", "hook_attn_out"), None
    return hook, head


def _run(model: HookedTransformer, tokens) -> tuple[dict, dict]:
    """({sender: output}, {component hook: its activation}) of one run (edge_reference.sender_value: heads' shares
    in post-norm blocks)."""
    names = set(component_hooks(model)) | {n for sender in sender_names(model) for n in recorded(model, sender)}
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    return ({sender: sender_value(model, sender, cache).clone() for sender in sender_names(model)},
            {n: cache[n].clone() for n in component_hooks(model)})


def outputs(model: HookedTransformer, pairs, counterfactual: str) -> tuple[tuple[dict, dict], tuple[dict, dict]]:
    """The clean and the source (senders' outputs, components' activations): the source the corrupted run's, the
    clean prompts' mean at each position, or zero."""
    with torch.no_grad():
        clean = _run(model, pairs.clean_tokens)
        if counterfactual == "patching":
            return clean, _run(model, pairs.corrupted_tokens)
        if counterfactual in ("mean", "mean-positional"):
            return clean, tuple({k: v.mean(0, keepdim=True).expand_as(v) for k, v in part.items()} for part in clean)
        return clean, tuple({k: torch.zeros_like(v) for k, v in part.items()} for part in clean)


def gradients(model: HookedTransformer, pairs, run: tuple, clean: dict, source: dict) -> dict:
    """d (mean logit difference) / d every receiver's input and every component's output in one run (`clean`,
    `source`: the components' activations)."""
    component, alpha = run
    replaced = None if component == "corrupted" else component_hooks(model)[component]
    kept = {}

    def replace(activation, hook):
        return (alpha * clean[hook.name] + (1 - alpha) * source[hook.name]).detach().requires_grad_(True)

    def keep(activation, hook):
        if activation.requires_grad:
            if not activation.is_leaf:
                activation.retain_grad()
            kept[hook.name] = activation
        return activation

    n = model.cfg.n_layers
    receivers = [f"blocks.{l}.hook_{x}_input" for l in range(n) for x in "qkv"] + [f"blocks.{n - 1}.hook_resid_post"]
    receivers += [] if model.cfg.attn_only else [f"blocks.{l}.hook_mlp_in" for l in range(n)]
    outputs_at = {output_gradient_hook(model, sender)[0] for sender in sender_names(model)}
    hooks = ([(replaced, replace)] if replaced else []) + [(name, keep) for name in set(receivers) | outputs_at | set(component_hooks(model))]
    tokens = pairs.corrupted_tokens if component == "corrupted" else pairs.clean_tokens
    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=hooks)
        rows = torch.arange(pairs.n_pairs)
        logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().backward()
    grads = {name: (t.grad if t.grad is not None else torch.zeros_like(t)).detach().clone() for name, t in kept.items()}
    model.zero_grad(set_to_none=True)
    return grads


def runs_for(integration: str, steps: int, n_components: int, component: int) -> list[tuple]:
    """The runs whose mean gradient scores a sender of `component`."""
    line = [k / steps for k in range(1, steps + 1)]
    if integration == "clean":
        return [(0, 1.0)]
    if integration == "inputs":
        return [(0, alpha) for alpha in line]
    if integration == "clean-corrupted":
        return [(0, 1.0), ("corrupted", None)]
    if integration == "activations":
        return [(component, alpha) for alpha in line]
    return [(c, alpha) for c in range(n_components) for alpha in line]  # activations-mib


def scores(model: HookedTransformer, pairs, edges: list[str], integration: str, steps: int = 1,
           counterfactual: str = "patching") -> tuple[list[float], dict[str, torch.Tensor]]:
    """(score of each edge, {sender: its per-dimension scores} for every sender): -sum over prompts and positions of
    (source - clean) x the mean gradient of the sender's runs, at the receiver's input (edges) or at the sender's
    own output (neurons; a node is their sum)."""
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    exposed(model)
    try:
        (clean_values, clean), (source_values, source) = outputs(model, pairs, counterfactual)
        n_components = len(component_hooks(model))
        memo: dict = {}

        def mean_grad(sender: str, hook: str, head: int | None) -> torch.Tensor:
            runs = runs_for(integration, steps, n_components, component_of(sender, not model.cfg.attn_only))
            total = 0
            for run in runs:
                if run not in memo:
                    memo[run] = gradients(model, pairs, run, clean, source)
                grad = memo[run][hook]
                total = total + (grad if head is None else grad[:, :, head])
            return total / len(runs)

        edge_scores = []
        for edge in edges:
            sender, receiver = edge.split("->")
            r_hook, r_head = receiver_hook(receiver, model.cfg.n_layers)
            difference = source_values[sender] - clean_values[sender]
            edge_scores.append(-float((difference * mean_grad(sender, r_hook, r_head)).sum()))
        neurons = {}
        for sender in sender_names(model):
            difference = source_values[sender] - clean_values[sender]
            neurons[sender] = -(difference * mean_grad(sender, *output_gradient_hook(model, sender))).sum((0, 1))
        return edge_scores, neurons
    finally:
        restore(model, before)


def node_patched(model: HookedTransformer, pairs, ablated: set[str]) -> float:
    """The mean logit difference with every node in `ablated` (input, aL.hH, mL) sending its corrupted run's output:
    its output hook (`hook_resid_pre` of block 0, the head's `hook_result`, `hook_mlp_out`) patched in one forward
    (`neuron_patched` with none of the node's dimensions kept)."""
    return neuron_patched(model, pairs, {name: torch.zeros(model.cfg.d_model, dtype=torch.bool) for name in ablated})


def neuron_patched(model: HookedTransformer, pairs, keep: dict[str, torch.Tensor]) -> float:
    """The mean logit difference with each sender's output dimension d taken from the corrupted run wherever
    keep[sender][d] is False (pre-norm blocks: at the head's `hook_result`, `hook_mlp_out`, block 0's
    `hook_resid_pre`), in one forward."""
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    exposed(model, split=False, mlp_in=False)
    try:
        hooks = {sender_hook(name)[0] for name in keep}
        with torch.no_grad():
            _, corrupted = model.run_with_cache(pairs.corrupted_tokens, names_filter=lambda n: n in hooks)

            def patch(activation, hook):
                activation = activation.clone()
                for name, mask in keep.items():
                    where, head = sender_hook(name)
                    if where == hook.name:
                        index = (slice(None), slice(None)) + (() if head is None else (head,))
                        activation[index] = torch.where(mask, activation[index], corrupted[where][index])
                return activation

            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(name, patch) for name in hooks])
        rows = torch.arange(pairs.n_pairs)
        return logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().item()
    finally:
        restore(model, before)
