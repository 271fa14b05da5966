"""Plain references for the edge methods, written without circuitlab's edge engine: one hook per sender and
receiver, TransformerLens' own split-input hook points, one edge at a time. The tests and bench/circuit_discovery.py
compare circuitlab against them.

- `patch_edge`: two forwards per edge: the counterfactual run records the sender's output; the clean run records
  it again and adds (counterfactual - clean) to the receiver's input;
- `attribution`: grad . (counterfactual - clean) of each edge from one clean forward and backward, looped edge by
  edge in Python;
- `edge_hook_names`: where an edge's sender and receiver live, parsed from its name.
"""

from __future__ import annotations

import re

import torch
from transformer_lens import HookedTransformer

from circuitlab.metrics import logit_diff


def sender_hook(name: str) -> tuple[str, int | None]:
    if name == "input":
        return "blocks.0.hook_resid_pre", None
    if name.startswith("m"):
        return f"blocks.{int(name[1:])}.hook_mlp_out", None
    layer, head = re.match(r"a(\d+)\.h(\d+)$", name).groups()
    return f"blocks.{layer}.attn.hook_result", int(head)


def receiver_hook(name: str, n_layers: int) -> tuple[str, int | None]:
    if name == "logits":
        return f"blocks.{n_layers - 1}.hook_resid_post", None
    if name.startswith("m"):
        return f"blocks.{int(name[1:])}.hook_mlp_in", None
    layer, head, x = re.match(r"a(\d+)\.h(\d+)<([qkv])>$", name).groups()
    return f"blocks.{layer}.hook_{x}_input", int(head)


def exposed(model: HookedTransformer, result: bool = True, split: bool = True, mlp_in: bool = True):
    """TransformerLens' own switches for per-head results and split q / k / v and MLP inputs (only those asked)."""
    model.set_use_attn_result(result)
    model.set_use_split_qkv_input(split)
    if not model.cfg.attn_only:
        model.set_use_hook_mlp_in(mlp_in)
    if model.cfg.n_key_value_heads is not None and split:
        model.set_ungroup_grouped_query_attention(True)


def restore(model: HookedTransformer, before: dict) -> None:
    for name, value in before.items():
        setattr(model.cfg, name, value)


FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "ungroup_grouped_query_attention")


def _mean_ld(model, logits, pairs) -> float:
    rows = torch.arange(pairs.n_pairs)
    return logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().item()


def patch_edge(model: HookedTransformer, pairs, edge: str, counterfactual: str = "patching") -> float:
    """The mean logit difference with `edge` alone patched: two forwards (three for `mean`: the clean prompts' mean)."""
    sender, receiver = edge.split("->")
    s_hook, s_head = sender_hook(sender)
    r_hook, r_head = receiver_hook(receiver, model.cfg.n_layers)
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    exposed(model, result=s_head is not None, split=r_hook.endswith(("q_input", "k_input", "v_input")), mlp_in=r_hook.endswith("mlp_in"))
    try:
        store = {}

        def grab(key):
            def hook(activation, hook):
                store[key] = (activation if s_head is None else activation[:, :, s_head]).detach().clone()
                return activation
            return hook

        def add(activation, hook):
            delta = store["source"] - store["clean"]
            activation = activation.clone()
            if r_head is None:
                activation += delta
            else:
                activation[:, :, r_head] += delta
            return activation

        with torch.no_grad():
            if counterfactual == "patching":
                model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(s_hook, grab("source"))])
            else:
                model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(s_hook, grab("source"))])
                store["source"] = store["source"].mean(0, keepdim=True) if counterfactual == "mean" else torch.zeros_like(store["source"])
            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(s_hook, grab("clean")), (r_hook, add)])
        return _mean_ld(model, logits, pairs)
    finally:
        restore(model, before)


def attribution(model: HookedTransformer, pairs, edges: list[str], counterfactual: str = "patching") -> list[float]:
    """EAP of each edge: -sum over positions, mean over prompts, of grad_receiver . (counterfactual - clean) of the
    sender, from one clean forward + backward (all weights and the embedding input differentiable). The
    counterfactual: the corrupted prompt's output (`patching`), the clean prompts' mean at each position (`mean`), or
    zero."""
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    exposed(model)
    try:
        names = {sender_hook(e.split("->")[0])[0] for e in edges}
        with torch.no_grad():
            _, corrupted = model.run_with_cache(pairs.corrupted_tokens if counterfactual == "patching" else pairs.clean_tokens,
                                                names_filter=lambda n: n in names)
            if counterfactual != "patching":
                corrupted = {n: corrupted[n].mean(0, keepdim=True) if counterfactual == "mean" else torch.zeros_like(corrupted[n])
                             for n in names}
        receivers = {receiver_hook(e.split("->")[1], model.cfg.n_layers)[0] for e in edges}
        kept = {}

        def keep(activation, hook):
            activation.retain_grad()
            kept[hook.name] = activation
            return activation

        with torch.enable_grad():
            clean_cache = {}

            def grab(activation, hook):
                clean_cache[hook.name] = activation.detach().clone()
                return activation

            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(n, grab) for n in names] + [(n, keep) for n in receivers])
            rows = torch.arange(pairs.n_pairs)
            logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().backward()
        scores = []
        for edge in edges:
            sender, receiver = edge.split("->")
            s_hook, s_head = sender_hook(sender)
            r_hook, r_head = receiver_hook(receiver, model.cfg.n_layers)
            diff = corrupted[s_hook] - clean_cache[s_hook]
            diff = diff if s_head is None else diff[:, :, s_head]
            grad = kept[r_hook].grad
            grad = grad if r_head is None else grad[:, :, r_head]
            scores.append(-float((diff * grad).sum()))
        model.zero_grad(set_to_none=True)
        return scores
    finally:
        restore(model, before)
