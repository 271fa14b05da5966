"""Plain references for the edge methods, written without circuitlab's edge engine: one hook per sender and
receiver, TransformerLens' own split-input hook points, one edge at a time. The tests and bench/circuit_discovery.py
compare circuitlab against them.

- `patch_edge`: two forwards per edge: the counterfactual run records the sender's output; the clean run records
  it again and adds (counterfactual - clean) to the receiver's input;
- `attribution`: grad . (counterfactual - clean) of each edge from one clean forward and backward, looped edge by
  edge in Python;
- `edge_hook_names`: where an edge's sender and receiver live, parsed from its name.

A head's output is its `hook_result`; in post-norm blocks (Gemma-2 / 3: `ln1_post`, OLMo-2: `ln1` after attention)
its share of the normalised attention output of the same run: the norm's weight x (result + b_O / n_heads) over the
norm's own `hook_scale` of that run (read at TransformerLens' hook, not recomputed).
"""

from __future__ import annotations

import re

import torch
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from circuitlab.metrics import logit_diff


def sender_hook(name: str) -> tuple[str, int | None]:
    if name == "input":
        return "blocks.0.hook_resid_pre", None
    if name.startswith("m"):
        return f"blocks.{int(name[1:])}.hook_mlp_out", None
    layer, head = re.match(r"a(\d+)\.h(\d+)$", name).groups()
    return f"blocks.{layer}.attn.hook_result", int(head)


def post_norm(model: HookedTransformer, layer: int) -> str | None:
    """The norm after the attention of `layer`, by its hook prefix; None in pre-norm blocks."""
    if model.cfg.use_normalization_before_and_after:
        return f"blocks.{layer}.ln1_post"
    return f"blocks.{layer}.ln1" if model.cfg.original_architecture in POST_NORM_ARCHITECTURES else None


def recorded(model: HookedTransformer, name: str) -> list[str]:
    """The hooks whose activations make sender `name`'s output."""
    hook, head = sender_hook(name)
    norm = None if head is None else post_norm(model, int(hook.split(".")[1]))
    return [hook] + ([f"{norm}.hook_scale"] if norm else [])


def sender_value(model: HookedTransformer, name: str, acts: dict) -> torch.Tensor:
    """Sender `name`'s output (batch, pos, d_model) from the activations of `recorded` hooks of one run."""
    hook, head = sender_hook(name)
    value = acts[hook] if head is None else acts[hook][:, :, head]
    norm = None if head is None else post_norm(model, int(hook.split(".")[1]))
    if norm is None:
        return value
    layer = int(hook.split(".")[1])
    weight = model.get_submodule(norm).w
    return weight * (value + model.blocks[layer].attn.b_O / model.cfg.n_heads) / acts[f"{norm}.hook_scale"]


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
    names = recorded(model, sender)
    before = {f: getattr(model.cfg, f) for f in FLAGS}
    exposed(model, result=s_head is not None, split=r_hook.endswith(("q_input", "k_input", "v_input")), mlp_in=r_hook.endswith("mlp_in"))
    try:
        store = {"source": {}, "clean": {}}

        def grab(key):
            def hook(activation, hook):
                store[key][hook.name] = activation.detach().clone()
                return activation
            return hook

        def add(activation, hook):
            delta = store["source"]["value"] - sender_value(model, sender, store["clean"])
            activation = activation.clone()
            if r_head is None:
                activation += delta
            else:
                activation[:, :, r_head] += delta
            return activation

        with torch.no_grad():
            model.run_with_hooks(pairs.corrupted_tokens if counterfactual == "patching" else pairs.clean_tokens,
                                 fwd_hooks=[(n, grab("source")) for n in names])
            source = sender_value(model, sender, store["source"])
            if counterfactual != "patching":
                source = source.mean(0, keepdim=True) if counterfactual == "mean" else torch.zeros_like(source)
            store["source"]["value"] = source
            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(n, grab("clean")) for n in names] + [(r_hook, add)])
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
        senders = sorted({e.split("->")[0] for e in edges})
        names = {n for sender in senders for n in recorded(model, sender)}
        with torch.no_grad():
            _, run = model.run_with_cache(pairs.corrupted_tokens if counterfactual == "patching" else pairs.clean_tokens,
                                          names_filter=lambda n: n in names)
            corrupted = {sender: sender_value(model, sender, run) for sender in senders}
            if counterfactual != "patching":
                corrupted = {sender: value.mean(0, keepdim=True) if counterfactual == "mean" else torch.zeros_like(value)
                             for sender, value in corrupted.items()}
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
            r_hook, r_head = receiver_hook(receiver, model.cfg.n_layers)
            diff = corrupted[sender] - sender_value(model, sender, clean_cache)
            grad = kept[r_hook].grad
            grad = grad if r_head is None else grad[:, :, r_head]
            scores.append(-float((diff * grad).sum()))
        model.zero_grad(set_to_none=True)
        return scores
    finally:
        restore(model, before)
