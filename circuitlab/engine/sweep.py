"""Activation patching, batched: many sweep points in one forward, started at the patched layer and position.

For one (stream, layer), every point of a chunk is a copy of the base run; a hook on the stream overwrites,
for point i, the cells (positions x heads) it selects with the source run's activation. Three savings over
one full forward per point:
- the forward starts at the patched layer, from the base run's cached residual stream;
- causality: a patch whose first position is p leaves positions < p untouched, so only positions >= p are
  computed, attending to the base run's cached keys and values of the earlier positions;
- only each prompt's final position is unembedded, and only the answer and wrong tokens' columns when the
  logit difference is the one metric.

denoising: base = corrupted prompts, source = clean prompts. noising: base = clean, source = corrupted.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.engine import chunks
from circuitlab.engine.batching import halving_on_oom, overhead_rows, plan_chunks, points_per_chunk
from circuitlab.engine.forward import (
    attn_result_enabled,
    base_hooks_after_attention,
    fast_mlps,
    final_logit_diff,
    final_position_logits,
    frozen_prefix,
    last_block_final_row,
    second_half,
    starts_after_attention,
)
from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location, cell_mask, head_mask, position_mask
from circuitlab.metrics import normalized_recovery, point_metrics
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")


DIRECTIONS = ("denoising", "noising")

@dataclass(frozen=True)
class PatchingResult:
    """Each metric per location, and its value on the unpatched clean and corrupted runs."""

    locations: list[Location]
    metrics: dict[str, Float[Tensor, " point"]]
    clean: dict[str, float] = field(default_factory=dict)
    corrupted: dict[str, float] = field(default_factory=dict)

    @property
    def logit_diff(self) -> Float[Tensor, " point"]:
        return self.metrics["logit_diff"]

    @property
    def clean_logit_diff(self) -> float:
        return self.clean["logit_diff"]

    @property
    def corrupted_logit_diff(self) -> float:
        return self.corrupted["logit_diff"]

    @property
    def normalized(self) -> Float[Tensor, " point"]:
        return normalized_recovery(self.logit_diff, self.corrupted_logit_diff, self.clean_logit_diff)

def first_difference(pairs: PromptPairs) -> int:
    """The first position where any clean prompt differs from its corrupted twin. Every activation before it
    is the same in both runs (causality), so patching there changes nothing."""
    differs = (pairs.clean_tokens != pairs.corrupted_tokens).any(0)
    return int(differs.float().argmax()) if differs.any() else pairs.width

def patch_sweep(
    model: HookedTransformer,
    pairs: PromptPairs,
    locations: list[Location],
    direction: str = "denoising",
    memory_budget_mb: int | None = None,
    progress: bool = True,
    metrics: tuple[str, ...] = ("logit_diff",),
    tracked: dict[str, int] | None = None,
    source_transform=None,
) -> PatchingResult:
    """Patch every location and return each metric per location. `source_transform(activation, hook_name)` replaces the
    source run's activation before patching (ablations: scaled, averaged or zeroed values)."""
    if direction not in DIRECTIONS:
        raise ConfigError("method.direction", direction, DIRECTIONS)
    metrics = tuple(dict.fromkeys(("logit_diff", *metrics)))
    device = model.cfg.device
    clean, corrupted = pairs.clean_tokens.to(device), pairs.corrupted_tokens.to(device)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    final_pos = pairs.final_positions.to(device)
    answer, wrong = pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)
    first_layer = min(loc.layer for loc in locations)
    source_hooks = {loc.hook_name for loc in locations}
    base_hooks = {f"blocks.{layer}.hook_resid_pre" for layer in range(first_layer, model.cfg.n_layers)}
    base_hooks |= {f"blocks.{layer}.attn.hook_{kv}" for layer in range(first_layer, model.cfg.n_layers) for kv in "kv"}
    for loc in locations:
        if starts_after_attention(model, loc.stream):
            base_hooks |= base_hooks_after_attention(loc.layer, loc.stream)
    needs_result = any(STREAMS[loc.stream].needs_attn_result for loc in locations)

    # identical prompts give identical activations before their first difference, unless the source is transformed
    unchanged_before = first_difference(pairs) if source_transform is None else 0
    with torch.no_grad(), attn_result_enabled(model, needs_result), fast_mlps(model):
        # stop after the last block: only the final positions are unembedded
        n_layers = model.cfg.n_layers
        base_resid, base_cache = model.run_with_cache(base_tokens, names_filter=lambda n: n in base_hooks, stop_at_layer=n_layers)
        source_resid, source_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in source_hooks, stop_at_layer=n_layers)
        clean_resid, corrupted_resid = (source_resid, base_resid) if direction == "denoising" else (base_resid, source_resid)
        clean_final = None if metrics == ("logit_diff",) else final_position_logits(model, clean_resid, final_pos)

        def score(resid: Tensor, final_index: Tensor, copies: int) -> dict[str, Tensor]:
            """Each metric per copy (rows: copies x prompts); the logit difference alone needs two logits per row."""
            if clean_final is None:
                values = final_logit_diff(model, resid, final_index, answer.repeat(copies), wrong.repeat(copies))
                return {"logit_diff": values.view(copies, pairs.n_pairs).mean(-1)}
            logits = final_position_logits(model, resid, final_index).view(copies, pairs.n_pairs, -1)
            return point_metrics(logits, answer, wrong, metrics, clean_final, tracked, pairs.labels_differ)

        baselines = {"clean": score(clean_resid, final_pos, 1), "corrupted": score(corrupted_resid, final_pos, 1)}

        chunk = points_per_chunk(model, pairs.n_pairs, pairs.width, memory_budget_mb)
        call = f"patch:{direction}:{','.join(metrics)}" + (":transformed" if source_transform is not None else "")

        results = {name: torch.full((len(locations),), float("nan")) for name in baselines["clean"]}  # NaN: another shard's

        def store(values_by_metric: dict[str, Tensor] | None, indices: list[int]) -> None:
            for name, values in (values_by_metric or {}).items():
                results[name][indices] = values.cpu()

        bar = tqdm(total=len(locations), desc="patching", unit="point", disable=not progress)
        for (stream, layer), group in itertools.groupby(range(len(locations)), key=lambda i: (locations[i].stream, locations[i].layer)):
            group = list(group)
            spec = STREAMS[stream]
            pos_masks = position_mask([locations[i].positions for i in group], pairs.width, pairs.named_positions, pairs.n_pairs)
            pos_masks[:, :, :unchanged_before] = False
            heads = head_mask([locations[i].heads for i in group], spec.n_heads(model.cfg)) if spec.has_heads else None
            patches_something = pos_masks.flatten(1).any(1).tolist()
            no_ops = [j for j in range(len(group)) if not patches_something[j]]
            active = [j for j in range(len(group)) if patches_something[j]]
            store(baselines["corrupted" if direction == "denoising" else "clean"], [group[j] for j in no_ops])
            bar.update(len(no_ops))
            starts = first_patched_position(pos_masks[active], model).tolist()
            source = _source(source_cache, spec.hook_name(layer), source_transform)
            for chunk_part, start in plan_chunks(starts, chunk, pairs.n_pairs, pairs.width, overhead_rows(device)):
                part = [active[k] for k in chunk_part]

                def compute(points: list[int], start: int = start) -> dict[str, Tensor]:
                    resid, final_index = _patched_final_resid(
                        model, layer, start, spec, base_cache, source, pos_masks[points].to(device),
                        None if heads is None else heads[points].to(device), final_pos, pairs.same_length,
                    )
                    return score(resid, final_index, len(points))

                keys = chunks.point_keys(call, [locations[group[j]] for j in part])
                store(chunks.compute_or_load(keys, lambda part=part: halving_on_oom(compute, part)), [group[j] for j in part])
                bar.update(len(part))
        bar.close()
    as_floats = lambda d: {k: float(v[0]) for k, v in d.items()}  # noqa: E731
    return PatchingResult(locations, results, as_floats(baselines["clean"]), as_floats(baselines["corrupted"]))

def _source(cache, hook_name: str, transform) -> Tensor:
    return cache[hook_name] if transform is None else transform(cache[hook_name], hook_name)

def first_patched_position(pos_masks: Bool[Tensor, "point batch pos"], model: HookedTransformer) -> Int[Tensor, " point"]:
    """The earliest position each point patches in any prompt (0 where causality cannot be used)."""
    if model.cfg.positional_embedding_type == "shortformer":
        return torch.zeros(pos_masks.shape[0], dtype=torch.int64)
    any_prompt = pos_masks.any(1)
    return torch.where(any_prompt.any(-1), any_prompt.float().argmax(-1), 0)

def _patched_final_resid(
    model: HookedTransformer,
    layer: int,
    start: int,
    spec,
    base_cache,
    source_act: Tensor,
    pos_masks: Bool[Tensor, "point batch pos"],
    heads: Bool[Tensor, "point head"] | None,
    final_pos: Int[Tensor, " batch"],
    same_length: bool,
) -> tuple[Float[Tensor, "point_batch pos d_model"], Int[Tensor, " point_batch"]]:
    """One batched forward over positions >= `start` from `layer` on, for points of one (stream, layer): the final
    residual stream and where each row's final position is in it."""
    n_points, n_prompts = pos_masks.shape[:2]
    cells = pos_masks[:, :, start:].reshape(n_points * n_prompts, -1)
    source = source_act.narrow(spec.pos_dim, start, source_act.shape[spec.pos_dim] - start)
    source = source.repeat(n_points, *([1] * (source.dim() - 1)))
    head_rows = None if heads is None else heads.repeat_interleave(n_prompts, 0)
    mask = cell_mask(spec, cells, head_rows, source.dim())

    def patch(activation: Tensor, hook) -> Tensor:
        return torch.where(mask, source, activation)

    def cached(name: str) -> Tensor:
        act = base_cache[f"blocks.{layer}.{name}"][:, start:]
        return act.repeat(n_points, *([1] * (act.dim() - 1)))

    last = model.cfg.n_layers - 1
    resid = cached("hook_resid_pre")
    with model.hooks(fwd_hooks=[(spec.hook_name(layer), patch)]):
        first = layer
        if starts_after_attention(model, spec.name):
            resid = second_half(model.blocks[layer], spec.name, resid, cached)
            first = layer + 1
        for index in range(first, model.cfg.n_layers):
            if index == last and index > layer and same_length and resid.shape[1] > 1:
                final_row = last_block_final_row(model, resid, frozen_prefix(model, base_cache, index, start, n_points))
                return final_row, torch.zeros_like(final_pos).repeat(n_points)
            resid = model.blocks[index](resid, past_kv_cache_entry=frozen_prefix(model, base_cache, index, start, n_points))
    return resid, (final_pos - start).repeat(n_points)


def patching_points(locations: list[Location], pairs: PromptPairs) -> int:
    """The points the sweep computes: those that patch a cell at or after the first position where a clean prompt
    differs from its corrupted twin (earlier cells hold the same activations in both runs)."""
    start = first_difference(pairs)
    specs = list(dict.fromkeys(loc.positions for loc in locations))
    masks = position_mask(specs, pairs.width, pairs.named_positions, pairs.n_pairs)[:, :, start:]
    changes = dict(zip(specs, masks.flatten(1).any(1).tolist()))
    return sum(changes[loc.positions] for loc in locations)
