"""Where senders' outputs and receivers' inputs live in a TransformerLens model, and the settings that expose them.

Senders: `blocks.0.hook_resid_pre` (the input: token + position embeddings), each head's output (its `hook_z`
times its W_O: TransformerLens' `hook_result`, computed only for the runs that need it) and `blocks.L.hook_mlp_out`. Receivers: `blocks.L.hook_{q,k,v}_input` (one copy of the residual
stream per head, before the norm), `blocks.L.hook_mlp_in` and the final residual stream
`blocks.{n-1}.hook_resid_post`. The residual stream any receiver reads is the sum of the outputs of the senders
before it (plus constant biases), which is what makes an edge's contribution separable.

Post-norm blocks (Gemma-2 and Gemma 3: a norm before and after attention and MLP; OLMo-2: after them only) normalise
the attention output as a whole before it joins the residual stream. A head's output there is its share of that
normalised output in the same run: w * (z_h W_O_h + b_O / n_heads) / scale, with the norm's scale (the RMS of the
whole attention output) taken from that run, as direct attribution decomposes it. The heads' outputs sum exactly to
what the layer adds to the residual stream, so the stream stays the sum of its senders in every run (the empty
circuit is the counterfactual run, the full one the clean run), and the MLP's output (`hook_mlp_out`) is already
post-normed. A change of the scale is shared by the heads in proportion to their outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from circuitlab.edges.graph import EdgeGraph
from circuitlab.errors import CircuitlabError

INPUT_HOOK = "blocks.0.hook_resid_pre"


def check_additive(cfg, label: str | None = None) -> None:
    """Edges need a residual stream that is the sum of its senders' outputs. Post-norm blocks are (heads' shares of
    the normalised attention output, see the module's docstring) when the norm after attention is an RMS norm;
    shortformer position embeddings enter every attention layer beside the stream. `cfg`: a HookedTransformerConfig
    or the ModelShape read from the model's config before its weights load; `label` names the method and model."""
    name = label or "method edges: model " + getattr(cfg, "model_name", "")
    if post_normed(cfg) and not str(getattr(cfg, "normalization_type", "RMS") or "").startswith("RMS"):
        raise CircuitlabError(f"{name} normalises each attention output with a {cfg.normalization_type} norm before adding it to the "
                              "residual stream; edges support RMS post-norms only (Gemma-2, Gemma 3, OLMo-2)")
    if getattr(cfg, "positional_embedding_type", "standard") == "shortformer":
        raise CircuitlabError(f"{name}: shortformer position embeddings bypass the residual stream; not supported")


def post_normed(cfg) -> bool:
    """Whether the attention output is normalised before it joins the residual stream (Gemma-2 / 3, OLMo-2)."""
    return bool(getattr(cfg, "use_normalization_before_and_after", False)) or getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES


def attention_output_norm(model: HookedTransformer, layer: int) -> torch.nn.Module | None:
    """The norm the attention output of `layer` passes before the residual stream: Gemma's `ln1_post`, OLMo-2's
    `ln1` (TransformerLens' name for its post-attention norm); None in pre-norm blocks."""
    block = model.blocks[layer]
    if model.cfg.use_normalization_before_and_after:
        return block.ln1_post
    return block.ln1 if model.cfg.original_architecture in POST_NORM_ARCHITECTURES else None


def input_norms(model: HookedTransformer, layer: int) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """The norms between the residual stream and the attention's q / k / v inputs and the MLP's input of `layer`
    (identities in OLMo-2's blocks, which normalise only outputs; the MLP's None in attention-only models)."""
    block = model.blocks[layer]
    if model.cfg.original_architecture in POST_NORM_ARCHITECTURES:
        return torch.nn.Identity(), torch.nn.Identity()
    return block.ln1, getattr(block, "ln2", None)


def heads_share_qk_norm(model: HookedTransformer) -> bool:
    """OLMo-2 normalises the queries (and keys) of all heads together: a head's query input changes the other
    heads' queries too."""
    return model.cfg.original_architecture in POST_NORM_ARCHITECTURES


def sender_hooks(graph: EdgeGraph) -> list[str]:
    return [INPUT_HOOK] + [f"blocks.{l}.{name}" for l in range(graph.n_layers)
                           for name in ("attn.hook_z", "hook_mlp_out")[: 1 + graph.has_mlp]]


def logits_hook(graph: EdgeGraph) -> str:
    return f"blocks.{graph.n_layers - 1}.hook_resid_post"


@contextmanager
def edges_exposed(model: HookedTransformer, split: bool = True, mlp_in: bool | None = None, ungroup: bool | None = None,
                  result: bool | None = None):
    """Per-head outputs, per-head q / k / v inputs and MLP inputs as hook points, restored afterwards. `split=False`
    leaves the q / k / v inputs fused and the per-head outputs unmaterialised; `mlp_in` (default: `split`) exposes
    the MLP input alone; `ungroup` (default: `split`) gives grouped-query attention one key and value per query
    head (the same numbers: the shared weights repeated); `result` (default: `split`) TransformerLens' per-head
    `hook_result` (which it computes as a broadcast product of head x d_head x d_model per position: read
    `hook_z` and `head_outputs` instead where speed matters)."""
    cfg = model.cfg
    mlp_in = split if mlp_in is None else mlp_in
    result = split if result is None else result
    wanted = {"use_attn_result": result, "use_split_qkv_input": split, "use_hook_mlp_in": mlp_in and not cfg.attn_only}
    if (split if ungroup is None else ungroup) and cfg.n_key_value_heads is not None:
        wanted["ungroup_grouped_query_attention"] = True
    before = {name: getattr(cfg, name) for name in wanted}
    try:
        for name, value in wanted.items():
            setattr(cfg, name, value)
        yield
    finally:
        for name, value in before.items():
            setattr(cfg, name, value)


def head_outputs(model: HookedTransformer, layer: int, z: Tensor) -> Float[Tensor, "batch pos head d_model"]:
    """Each head's output (z_h W_O_h, without the shared bias), as TransformerLens' `hook_result` computes it; in a
    post-norm block its share of the normalised attention output of the run `z` comes from (the module's docstring:
    the heads' outputs sum to `hook_attn_out`)."""
    attn = model.blocks[layer].attn
    results = torch.einsum("bphe,hed->bphd", z, attn.W_O)
    norm = attention_output_norm(model, layer)
    if norm is None:
        return results
    return normalised_shares(norm, results + attn.b_O / results.shape[2], results.sum(2) + attn.b_O)


def normalised_shares(norm: torch.nn.Module, parts: Float[Tensor, "batch pos k d_model"],
                      total: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos k d_model"]:
    """The parts' shares of norm(total) for an RMS norm, total = parts.sum(2): each part times the norm's weight over
    the total's scale, computed as TransformerLens' RMSNorm computes its output (float32 scale, then the dtype)."""
    scale = (total.float().pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
    shares = (parts.float() / scale[:, :, None]).to(parts.dtype)
    return shares * norm.w if hasattr(norm, "w") else shares


def sender_parts(cache, graph: EdgeGraph, model: HookedTransformer, start: int = 0) -> Iterator[Float[Tensor, "batch pos k d_model"]]:
    """Every sender's output from a run's cache (of `sender_hooks`) at the positions from `start` on, in the graph's
    sender order, a few senders at a time (the input; each layer's heads; its MLP)."""
    yield cache[INPUT_HOOK][:, start:, None]
    for layer in range(graph.n_layers):
        yield head_outputs(model, layer, cache[f"blocks.{layer}.attn.hook_z"][:, start:])
        if graph.has_mlp:
            yield cache[f"blocks.{layer}.hook_mlp_out"][:, start:, None]


def stack_senders(cache, graph: EdgeGraph, model: HookedTransformer, start: int = 0) -> Float[Tensor, "batch pos sender d_model"]:
    """Every sender's output from a run's cache (of `sender_hooks`) at the positions from `start` on, in the graph's
    sender order (written part by part into one tensor: no list of every part beside it)."""
    batch, width, d_model = cache[INPUT_HOOK][:, start:].shape
    out = torch.empty(batch, width, len(graph.senders), d_model, device=cache[INPUT_HOOK].device, dtype=cache[INPUT_HOOK].dtype)
    first = 0
    for part in sender_parts(cache, graph, model, start):
        out[:, :, first:first + part.shape[2]] = part
        first += part.shape[2]
    return out


def sender_outputs(model: HookedTransformer, tokens: Tensor, graph: EdgeGraph, start: int = 0) -> Float[Tensor, "batch pos sender d_model"]:
    """The senders' outputs of one run at the positions from `start` on (no gradients; the forward runs every
    position and stops after the last block)."""
    names = set(sender_hooks(graph))
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names, stop_at_layer=model.cfg.n_layers)
        return stack_senders(cache, graph, model, start)
