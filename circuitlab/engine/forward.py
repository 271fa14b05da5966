"""Forward helpers every method shares: the model's own computation, started part-way or read at one position.

- `final_position_logits` / `final_logit_diff`: unembed only each prompt's final position (every logit, or the
  few a metric reads), with the model's logit soft cap;
- `frozen_prefix`: a cached run's keys and values of the positions before a patch, as a frozen KV-cache entry, so
  a forward over the later positions attends to them;
- `second_half` / `starts_after_attention`: a block from its attention output on, for streams past attention;
- `last_block_final_row`: the last block at the final position only;
- `fast_mlps`, `attn_result_enabled`: temporary model settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from types import MethodType

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.components.mlps.gated_mlp import GatedMLP
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap


@contextmanager
def fast_mlps(model: HookedTransformer):
    """The model's MLPs, the same numbers with less work, while the context lasts:
    - `gelu_new` runs as torch's fused tanh-approximate GELU (the same formula, one kernel);
    - gated MLPs (Llama, Mistral, Qwen, Gemma) multiply by their weights as stored: TransformerLens' own forward
      copies each of its three weight matrices transposed on every call (`W.T.contiguous()`), which at a few
      hundred rows costs as much as the products themselves. Hooks (`hook_pre`, `hook_pre_linear`, `hook_post`)
      see what they see in TransformerLens' forward. Float32 on one device only (TransformerLens keeps its
      layout for bfloat16, where the accumulation order follows it)."""
    swapped = []
    plain_gated = model.cfg.dtype == torch.float32 and model.cfg.n_devices == 1 and not model.cfg.is_layer_norm_activation()
    fused = partial(torch.nn.functional.gelu, approximate="tanh")
    for block in model.blocks:
        mlp = getattr(block, "mlp", None)  # attention-only models have none
        if mlp is None:
            continue
        if model.cfg.act_fn == "gelu_new" and hasattr(mlp, "act_fn"):
            swapped.append((mlp, "act_fn", mlp.act_fn))
            mlp.act_fn = fused
        if plain_gated and type(mlp) is GatedMLP:
            swapped.append((mlp, "forward", None))
            mlp.forward = MethodType(_gated_mlp_forward, mlp)
    try:
        yield
    finally:
        for mlp, name, original in swapped:
            if name == "forward":
                del mlp.forward  # the class's own again
            else:
                setattr(mlp, name, original)


fused_gelu = fast_mlps  # the name DAS and path patching import


def _gated_mlp_forward(self: GatedMLP, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """TransformerLens' GatedMLP.forward without its per-call weight copies."""
    pre_act = self.hook_pre(torch.matmul(x, self.W_gate))
    pre_linear = self.hook_pre_linear(torch.matmul(x, self.W_in))
    post_act = self.hook_post((self.act_fn(pre_act) * pre_linear) + self.b_in)
    out = torch.addmm(self.b_out, post_act.reshape(-1, post_act.shape[-1]), self.W_out)
    return out.view(*post_act.shape[:-1], out.shape[-1])

@contextmanager
def attn_result_enabled(model: HookedTransformer, needed: bool):
    """Turn on TransformerLens' per-head `hook_result` while it is needed."""
    before = model.cfg.use_attn_result
    if needed and not before:
        model.set_use_attn_result(True)
    try:
        yield
    finally:
        if model.cfg.use_attn_result != before:
            model.set_use_attn_result(before)

def final_position_logits(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], final_pos: Int[Tensor, " batch"],
    tokens: Int[Tensor, "batch k"] | None = None,
) -> Float[Tensor, "batch vocab"] | Float[Tensor, "batch k"]:
    """Unembed only each prompt's final position of a final residual stream, with the model's logit soft cap
    (Gemma-2) as in its own forward: every logit, or with `tokens` only the logits of those tokens (row i's
    `tokens[i]`), from the few unembedding columns they name instead of the whole vocabulary.

    A plain matmul with W_U: TransformerLens' Unembed copies the transposed unembedding on every call.
    """
    last = resid[torch.arange(resid.shape[0], device=resid.device), final_pos][:, None]
    if hasattr(model, "ln_final"):  # models without normalisation have none
        last = model.ln_final(last)
    if tokens is None:
        logits = torch.addmm(model.unembed.b_U, last[:, 0], model.unembed.W_U)
    else:
        columns, where = torch.unique(tokens, return_inverse=True)
        logits = torch.addmm(model.unembed.b_U[columns], last[:, 0], model.unembed.W_U[:, columns]).gather(1, where)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)

def final_logit_diff(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], final_pos: Int[Tensor, " batch"],
    answer: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"],
) -> Float[Tensor, " batch"]:
    """logit(answer) - logit(wrong) at each row's final position, from the two unembedding columns alone."""
    logits = final_position_logits(model, resid, final_pos, torch.stack([answer, wrong], -1)).float()
    return logits[:, 0] - logits[:, 1]

def frozen_prefix(
    model: HookedTransformer, cache, layer: int, start: int, repeats: int, rows: Tensor | None = None
) -> TransformerLensKeyValueCacheEntry | None:
    """A cached run's keys and values of positions < `start` at `layer` (of the prompts `rows`), repeated for
    `repeats` points, as a frozen KV-cache entry: forwards over positions >= start attend to them. None when
    start is 0. The keys are stored as the model's own KV cache stores them: after the per-head key norm of
    models that have one (Qwen3), which TransformerLens applies after `hook_k`."""
    if start == 0:
        return None
    keys, values = (cache[f"blocks.{layer}.attn.hook_{kv}"] for kv in "kv")
    if rows is not None:
        keys, values = keys[rows], values[rows]
    if model.cfg.use_qk_norm:
        keys = model.blocks[layer].attn.k_norm(keys[:, :start].reshape(-1, keys.shape[-1])).view_as(keys[:, :start])
    elif model.cfg.original_architecture in JOINT_KEY_NORM:  # OLMo-2: one key norm over every head, after hook_k
        keys = model.blocks[layer].attn.k_norm(keys[:, :start].flatten(-2)).view_as(keys[:, :start])
    return TransformerLensKeyValueCacheEntry(keys[:, :start].repeat(repeats, 1, 1, 1), values[:, :start].repeat(repeats, 1, 1, 1), frozen=True)

JOINT_KEY_NORM = ("Olmo2ForCausalLM", "Olmo3ForCausalLM", "OlmoeForCausalLM")  # TransformerLens' k_norm over all heads at once

AFTER_ATTENTION = {"z": "attn.hook_z", "result": "attn.hook_result", "attn_out": "hook_attn_out", "resid_mid": "hook_attn_out",
                   "mlp_in": "hook_attn_out", "mlp_post": "hook_attn_out", "mlp_out": "hook_attn_out"}

def starts_after_attention(model: HookedTransformer, stream: str) -> bool:
    """Streams past the attention of their layer skip recomputing it (sequential pre-norm blocks only)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = model.cfg
    plain = not (cfg.attn_only or cfg.parallel_attn_mlp or cfg.use_normalization_before_and_after or cfg.use_hook_mlp_in)
    return stream in AFTER_ATTENTION and plain and cfg.original_architecture not in POST_NORM_ARCHITECTURES

def base_hooks_after_attention(layer: int, stream: str) -> set[str]:
    """What the base run must cache for `starts_after_attention`."""
    return {f"blocks.{layer}.hook_attn_out", f"blocks.{layer}.{AFTER_ATTENTION[stream]}"}

def second_half(block, stream: str, resid_pre: Tensor, cached) -> Tensor:
    """Block `layer` from its attention output on, as TransformerLens computes it: the base run's attention
    output, changed by the patched heads (z or result) or patched itself (attn_out's hook), then the MLP."""
    attn_out = cached("hook_attn_out")
    if stream == "z":
        base_z = cached("attn.hook_z")
        attn_out = attn_out + torch.einsum("bphd,hdm->bpm", block.attn.hook_z(base_z) - base_z, block.attn.W_O)
    elif stream == "result":
        base_result = cached("attn.hook_result")
        attn_out = attn_out + (block.attn.hook_result(base_result) - base_result).sum(2)
    resid_mid = block.hook_resid_mid(resid_pre + block.hook_attn_out(attn_out))
    return block.hook_resid_post(resid_mid + block.apply_mlp(block.ln2(resid_mid)))

def last_block_final_row(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], prefix: TransformerLensKeyValueCacheEntry | None
) -> Float[Tensor, "batch 1 d_model"]:
    """The last block only matters at the final position (all prompts of one length): compute keys and
    values for every row, then run the block on the final row alone, attending to them (and to `prefix`, the
    frozen keys and values of the positions before `resid`'s)."""
    block = model.blocks[-1]
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    arch = model.cfg.original_architecture
    normalized = resid[:, :-1] if arch in POST_NORM_ARCHITECTURES else block.ln1(resid[:, :-1])  # OLMo-2: no norm before attention
    _, keys, values = block.attn.calculate_qkv_matrices(normalized[:, :1], normalized, normalized)
    if arch in JOINT_KEY_NORM:
        keys = block.attn.k_norm(keys.flatten(-2)).view_as(keys)
    if prefix is not None:
        keys, values = torch.cat([prefix.past_keys, keys], 1), torch.cat([prefix.past_values, values], 1)
    return block(resid[:, -1:], past_kv_cache_entry=TransformerLensKeyValueCacheEntry(keys, values, frozen=True))
