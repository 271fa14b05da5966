"""Activation patching, batched: many sweep points in one forward, started at the patched layer.

For one (stream, layer), every point of a chunk is a copy of the base run's residual stream entering that
layer; a hook on the stream overwrites, for point i, the cells its position mask selects with the source
run's activation. Only the final position of each prompt is unembedded.

denoising: base = corrupted prompts, source = clean prompts. noising: base = clean, source = corrupted.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.errors import ConfigError
from circuitlab.locations import Location, position_mask
from circuitlab.metrics import logit_diff, normalized_recovery
from circuitlab.tasks.base import PromptPairs

DIRECTIONS = ("denoising", "noising")


@dataclass(frozen=True)
class PatchingResult:
    """Mean logit difference per location, and the two unpatched baselines."""

    locations: list[Location]
    logit_diff: Float[Tensor, " point"]
    clean_logit_diff: float
    corrupted_logit_diff: float

    @property
    def normalized(self) -> Float[Tensor, " point"]:
        return normalized_recovery(self.logit_diff, self.corrupted_logit_diff, self.clean_logit_diff)


def final_position_logits(
    model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], final_pos: Tensor
) -> Float[Tensor, "batch vocab"]:
    """Unembed only each prompt's final position of a final residual stream."""
    last = resid[torch.arange(resid.shape[0], device=resid.device), final_pos][:, None]
    return model.unembed(model.ln_final(last))[:, 0]


def run_from_layer(model: HookedTransformer, resid: Float[Tensor, "batch pos d_model"], layer: int, final_pos: Tensor):
    """Run blocks `layer..` on a residual stream and return final-position logits."""
    for block in model.blocks[layer:]:
        resid = block(resid)
    return final_position_logits(model, resid, final_pos)


def points_per_chunk(model: HookedTransformer, n_prompts: int, width: int, memory_budget_mb: int) -> int:
    """How many sweep points fit one forward within the memory budget (a rough activation estimate)."""
    cfg = model.cfg
    floats = n_prompts * width * (6 * cfg.d_model + 2 * cfg.d_mlp + 3 * cfg.n_heads * width)
    per_point = floats * 4
    return max(1, int(memory_budget_mb * 2**20 // per_point))


def patch_sweep(
    model: HookedTransformer,
    pairs: PromptPairs,
    locations: list[Location],
    direction: str = "denoising",
    memory_budget_mb: int = 1024,
    progress: bool = True,
) -> PatchingResult:
    """Patch every location and return the mean logit difference of each."""
    if direction not in DIRECTIONS:
        raise ConfigError("method.direction", direction, DIRECTIONS)
    device = model.cfg.device
    clean, corrupted = pairs.clean_tokens.to(device), pairs.corrupted_tokens.to(device)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    final_pos = pairs.final_positions.to(device)
    answer, wrong = pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)

    hooks = {loc.hook_name for loc in locations}
    starts = {f"blocks.{loc.layer}.hook_resid_pre" for loc in locations}
    with torch.no_grad():
        base_logits, base_cache = model.run_with_cache(base_tokens, names_filter=lambda n: n in starts)
        source_logits, source_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in hooks)
        rows = torch.arange(pairs.n_pairs, device=device)
        base_ld = logit_diff(base_logits[rows, final_pos], answer, wrong).mean().item()
        source_ld = logit_diff(source_logits[rows, final_pos], answer, wrong).mean().item()
    clean_ld, corrupted_ld = (source_ld, base_ld) if direction == "denoising" else (base_ld, source_ld)

    chunk = points_per_chunk(model, pairs.n_pairs, pairs.width, memory_budget_mb)
    results = torch.empty(len(locations))
    bar = tqdm(total=len(locations), desc="patching", unit="point", disable=not progress)
    order = sorted(range(len(locations)), key=lambda i: (locations[i].stream, locations[i].layer))
    for (stream, layer), group in itertools.groupby(order, key=lambda i: (locations[i].stream, locations[i].layer)):
        group = list(group)
        for start in range(0, len(group), chunk):
            indices = group[start : start + chunk]
            specs = [locations[i].positions for i in indices]
            mask = position_mask(specs, pairs.width, pairs.named_positions, pairs.n_pairs).to(device)
            values = _patched_logit_diffs(
                model, base_cache[f"blocks.{layer}.hook_resid_pre"], source_cache[locations[indices[0]].hook_name],
                locations[indices[0]].hook_name, layer, mask, final_pos, answer, wrong,
            )
            results[indices] = values.cpu()
            bar.update(len(indices))
    bar.close()
    return PatchingResult(locations, results, clean_ld, corrupted_ld)


def _patched_logit_diffs(
    model: HookedTransformer,
    base_resid: Float[Tensor, "batch pos d_model"],
    source_act: Float[Tensor, "batch pos ..."],
    hook_name: str,
    layer: int,
    mask: Bool[Tensor, "point batch pos"],
    final_pos: Tensor,
    answer: Tensor,
    wrong: Tensor,
) -> Float[Tensor, " point"]:
    """One batched forward for several points of one (stream, layer): mean logit difference per point."""
    n_points, n_prompts = mask.shape[:2]
    flat_mask = mask.reshape(n_points * n_prompts, -1)
    source = source_act.repeat(n_points, *([1] * (source_act.dim() - 1)))

    def patch(activation: Tensor, hook) -> Tensor:
        cell_mask = flat_mask.view(*flat_mask.shape, *([1] * (activation.dim() - 2)))
        return torch.where(cell_mask, source, activation)

    resid = base_resid.repeat(n_points, 1, 1)
    with torch.no_grad(), model.hooks(fwd_hooks=[(hook_name, patch)]):
        logits = run_from_layer(model, resid, layer, final_pos.repeat(n_points))
    per_prompt = logit_diff(logits, answer.repeat(n_points), wrong.repeat(n_points))
    return per_prompt.view(n_points, n_prompts).mean(-1)
