"""Forward helpers every method shares: the model's own computation, started part-way or read at one position.

- `final_position_logits`: unembed only each prompt's final position, with the model's logit soft cap;
- `frozen_prefix`: a cached run's keys and values of the positions before a patch, as a frozen KV-cache entry, so
  a forward over the later positions attends to them;
- `second_half` / `starts_after_attention`: a block from its attention output on, for streams past attention;
- `last_block_final_row`: the last block at the final position only;
- `fused_gelu`, `attn_result_enabled`: temporary model settings.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap


@contextmanager
def fused_gelu(model: HookedTransformer):
    """Run `gelu_new` MLPs with torch's fused tanh-approximate GELU (the same formula, one kernel)."""
    swapped = []
    if model.cfg.act_fn == "gelu_new":
        fused = partial(torch.nn.functional.gelu, approximate="tanh")
        for block in model.blocks:
            mlp = getattr(block, "mlp", None)  # attention-only models have none
            if hasattr(mlp, "act_fn"):
                swapped.append((mlp, mlp.act_fn))
                mlp.act_fn = fused
    try:
        yield
    finally:
        for mlp, original in swapped:
            mlp.act_fn = original

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
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], final_pos: Int[Tensor, " batch"]
) -> Float[Tensor, "batch vocab"]:
    """Unembed only each prompt's final position of a final residual stream, with the model's logit soft cap
    (Gemma-2) as in its own forward.

    A plain matmul with W_U: TransformerLens' Unembed copies the transposed unembedding on every call.
    """
    last = resid[torch.arange(resid.shape[0], device=resid.device), final_pos][:, None]
    if hasattr(model, "ln_final"):  # models without normalisation have none
        last = model.ln_final(last)
    return apply_softcap(torch.addmm(model.unembed.b_U, last[:, 0], model.unembed.W_U), model.cfg.output_logits_soft_cap)

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
    return TransformerLensKeyValueCacheEntry(keys[:, :start].repeat(repeats, 1, 1, 1), values[:, :start].repeat(repeats, 1, 1, 1), frozen=True)

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
    normalized = block.ln1(resid[:, :-1])
    _, keys, values = block.attn.calculate_qkv_matrices(normalized[:, :1], normalized, normalized)
    if prefix is not None:
        keys, values = torch.cat([prefix.past_keys, keys], 1), torch.cat([prefix.past_values, values], 1)
    return block(resid[:, -1:], past_kv_cache_entry=TransformerLensKeyValueCacheEntry(keys, values, frozen=True))
