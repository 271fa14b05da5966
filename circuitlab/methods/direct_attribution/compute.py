"""Logit lens and direct logit attribution (seed 001) of the logit difference at each prompt's final position.

The final residual stream is a sum of components (embeddings, each attention layer's heads and output bias, each
MLP). Through the final norm, with its scale taken from the real run (frozen, so the map is linear), each
component's dot product with the logit-difference direction W_U[:, answer] - W_U[:, wrong] is its direct
contribution; with the norm's bias and the unembedding bias they sum to the measured logit difference exactly
(before the logit soft cap, on models that have one: the cap is not linear). A head's output passes through its
layer's post-attention norm where there is one (Gemma-2), with that norm's scale too taken from the real run.
The logit lens reads the accumulated residual stream after each layer (and, with `incl_mid`, after each
attention) through the same frozen norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer
from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

from circuitlab.engine.forward import final_position_logits
from circuitlab.tasks.base import PromptPairs


LAYER_COMPONENTS = ("embed", "pos_embed", "attn_out", "mlp_out")  # they sum to the final residual stream
HEAD_COMPONENTS = ("head", "attn_bias")  # a layer's heads and output bias sum to its attn_out


@dataclass
class DirectAttribution:
    """Mean over prompts of each quantity, in logit-difference units."""

    logit_diff: float  # measured, as the model outputs it (after any soft cap)
    lens: list[tuple[str, int, float]]  # (stream, layer, value): accumulated residual through the final norm, + constant
    components: list[tuple[str, int, int | None, float]]  # (component, layer, head, value)
    constant: float  # the final norm's bias and the unembedding bias along the direction
    uncapped_logit_diff: float  # measured before the logit soft cap (= logit_diff without one): what the parts sum to

    @property
    def decomposition_error(self) -> float:
        """|embeddings + attention and MLP outputs of every layer + constant - measured logit diff before the cap|."""
        total = sum(v for name, _, _, v in self.components if name in LAYER_COMPONENTS) + self.constant
        return abs(total - self.uncapped_logit_diff)


def direct_attribution(model: HookedTransformer, pairs: PromptPairs, prompts: str = "clean", incl_mid: bool = True) -> DirectAttribution:
    """Logit lens, per-layer decomposition and per-head attribution for the `prompts` (clean or corrupted)."""
    tokens = (pairs.clean_tokens if prompts == "clean" else pairs.corrupted_tokens).to(model.cfg.device)
    n_layers, rows = model.cfg.n_layers, torch.arange(pairs.n_pairs, device=tokens.device)
    final = pairs.final_positions.to(tokens.device)
    with torch.no_grad():
        cache = final_position_cache(model, tokens, final)
        answer, wrong = pairs.answer_tokens.to(tokens.device), pairs.wrong_tokens.to(tokens.device)
        last = cache[f"blocks.{n_layers - 1}.hook_resid_post"][:, None]
        logits = final_position_logits(model, last, torch.zeros_like(final))  # [batch, vocab], soft-capped as the model's own
        measured = (logits[rows, answer] - logits[rows, wrong]).mean().item()
        final_normed = cache.get("ln_final.hook_normalized", cache[f"blocks.{n_layers - 1}.hook_resid_post"])
        if "ln_final.hook_normalized" in cache and hasattr(model.ln_final, "w"):  # a final norm with its weights (OLMo-2: not folded)
            final_normed = final_normed * model.ln_final.w + getattr(model.ln_final, "b", 0.0)
        uncapped_diff = (final_normed * (model.W_U[:, answer] - model.W_U[:, wrong]).T).sum(-1) + model.b_U[answer] - model.b_U[wrong]
        uncapped_measured = uncapped_diff.mean().item()
        direction = (model.W_U[:, answer] - model.W_U[:, wrong]).T  # [batch, d_model]
        at_end = cache.__getitem__
        scale = cache.get("ln_final.hook_scale")

        centre = model.cfg.normalization_type in ("LN", "LNPre")

        def read(component: Float[Tensor, "batch d_model"]) -> float:
            """A component's direct contribution, through the frozen final norm."""
            if scale is not None:
                component = ((component - component.mean(-1, keepdim=True)) if centre else component) / scale
            weight = getattr(getattr(model, "ln_final", None), "w", None)
            if weight is not None:
                component = component * weight
            return (component * direction).sum(-1).mean().item()

        lens = []
        mids = incl_mid and not model.cfg.attn_only and not model.cfg.parallel_attn_mlp
        for layer in range(n_layers):
            lens.append(("resid_pre", layer, read(at_end(f"blocks.{layer}.hook_resid_pre"))))
            if mids:
                lens.append(("resid_mid", layer, read(at_end(f"blocks.{layer}.hook_resid_mid"))))
        lens.append(("resid_post", n_layers - 1, read(at_end(f"blocks.{n_layers - 1}.hook_resid_post"))))

        post_norm_only = model.cfg.original_architecture in POST_NORM_ARCHITECTURES
        components = [("embed", 0, None, read(at_end("hook_embed")))]
        if "hook_pos_embed" in cache:
            components.append(("pos_embed", 0, None, read(at_end("hook_pos_embed"))))
        for layer in range(n_layers):
            attn = model.blocks[layer].attn
            z = at_end(f"blocks.{layer}.attn.hook_z")  # [batch, head, d_head]
            heads = torch.einsum("bhd,hdm->bhm", z, attn.W_O)
            bias = attn.b_O.expand_as(heads[:, 0])
            post = "ln1_post" if hasattr(model.blocks[layer], "ln1_post") else "ln1" if post_norm_only else None
            if post is not None:  # the post-attention norm (OLMo-2's is its ln1), frozen at the run's scale
                post_scale, post_weight = at_end(f"blocks.{layer}.{post}.hook_scale"), getattr(model.blocks[layer], post).w
                heads, bias = heads / post_scale[:, None] * post_weight, bias / post_scale * post_weight
            components.append(("attn_out", layer, None, read(at_end(f"blocks.{layer}.hook_attn_out"))))
            components += [("head", layer, h, read(heads[:, h])) for h in range(model.cfg.n_heads)]
            components.append(("attn_bias", layer, None, read(bias)))
            if not model.cfg.attn_only:
                components.append(("mlp_out", layer, None, read(at_end(f"blocks.{layer}.hook_mlp_out"))))
        bias = getattr(getattr(model, "ln_final", None), "b", None)
        constant = (model.b_U[answer] - model.b_U[wrong]).mean().item()
        if bias is not None:
            constant += (bias * direction).sum(-1).mean().item()
    lens = [(stream, layer, value + constant) for stream, layer, value in lens]  # the last point: the measured value (before any cap)
    return DirectAttribution(measured, lens, components, constant, uncapped_measured)


def final_position_cache(model: HookedTransformer, tokens: Tensor, final: Tensor) -> dict[str, Tensor]:
    """The activations the attribution reads, at each prompt's final position only (a full cache of a 30-layer model
    holds every position of every hook, and the logits of the whole vocabulary at every position: gigabytes)."""
    wanted = ("hook_embed", "hook_pos_embed", "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "attn.hook_z",
              "hook_attn_out", "hook_mlp_out", "ln1_post.hook_scale", "ln1.hook_scale", "ln_final.hook_scale", "ln_final.hook_normalized")
    rows, kept = torch.arange(tokens.shape[0], device=tokens.device), {}

    def keep(activation: Tensor, hook) -> None:
        kept[hook.name] = activation[rows, final].clone()

    model.run_with_hooks(tokens, return_type=None, fwd_hooks=[(lambda name: name.endswith(wanted), keep)])
    return kept
