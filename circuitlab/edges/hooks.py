"""Where senders' outputs and receivers' inputs live in a TransformerLens model, and the settings that expose them.

Senders: `blocks.0.hook_resid_pre` (the input: token + position embeddings), `blocks.L.attn.hook_result` (one
output per head) and `blocks.L.hook_mlp_out`. Receivers: `blocks.L.hook_{q,k,v}_input` (one copy of the residual
stream per head, before the norm), `blocks.L.hook_mlp_in` and the final residual stream
`blocks.{n-1}.hook_resid_post`. The residual stream any receiver reads is the sum of the outputs of the senders
before it (plus constant biases), which is what makes an edge's contribution separable.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from circuitlab.edges.graph import EdgeGraph
from circuitlab.errors import CircuitlabError

INPUT_HOOK = "blocks.0.hook_resid_pre"


def check_additive(cfg) -> None:
    """Edges need a residual stream that is the sum of its senders' outputs; norms after attention (Gemma-2,
    OLMo-2) make head outputs enter it through a nonlinearity."""
    if getattr(cfg, "use_normalization_before_and_after", False) or getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        raise CircuitlabError(
            f"method edges: model {getattr(cfg, 'model_name', '')} normalises each block's output before adding it to the residual "
            "stream, so head and MLP outputs are not additive edges; use a node-level method (activation_patching, path_patching, ablation)")
    if getattr(cfg, "positional_embedding_type", "standard") == "shortformer":
        raise CircuitlabError("method edges: shortformer position embeddings bypass the residual stream; not supported")


def sender_hooks(graph: EdgeGraph) -> list[str]:
    return [INPUT_HOOK] + [f"blocks.{l}.{name}" for l in range(graph.n_layers)
                           for name in ("attn.hook_result", "hook_mlp_out")[: 1 + graph.has_mlp]]


def receiver_hooks(graph: EdgeGraph) -> list[str]:
    per_layer = [f"hook_{x}_input" for x in "qkv"] + (["hook_mlp_in"] if graph.has_mlp else [])
    return [f"blocks.{l}.{name}" for l in range(graph.n_layers) for name in per_layer] + [logits_hook(graph)]


def logits_hook(graph: EdgeGraph) -> str:
    return f"blocks.{graph.n_layers - 1}.hook_resid_post"


@contextmanager
def edges_exposed(model: HookedTransformer, split: bool = True):
    """Per-head outputs, per-head q / k / v inputs (one per query head under grouped-query attention) and MLP
    inputs as hook points, restored afterwards. `split=False` leaves the q / k / v inputs fused (a forward that
    needs only the senders' outputs)."""
    cfg = model.cfg
    wanted = {"use_attn_result": True, "use_split_qkv_input": split, "use_hook_mlp_in": split and not cfg.attn_only}
    if split and cfg.n_key_value_heads is not None:
        wanted["ungroup_grouped_query_attention"] = True
    before = {name: getattr(cfg, name) for name in wanted}
    try:
        for name, value in wanted.items():
            setattr(cfg, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(cfg, name, value)


def stack_senders(cache, graph: EdgeGraph) -> Float[Tensor, "batch pos sender d_model"]:
    """Every sender's output from a run's cache, in the graph's sender order."""
    parts = [cache[INPUT_HOOK][:, :, None]]
    for layer in range(graph.n_layers):
        parts.append(cache[f"blocks.{layer}.attn.hook_result"])
        if graph.has_mlp:
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    return torch.cat(parts, 2)


def sender_outputs(model: HookedTransformer, tokens: Tensor, graph: EdgeGraph) -> Float[Tensor, "batch pos sender d_model"]:
    """The senders' outputs of one run (no gradients; the forward stops after the last block)."""
    names = set(sender_hooks(graph))
    with torch.no_grad(), edges_exposed(model, split=False):
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers)
    return stack_senders(cache, graph)
