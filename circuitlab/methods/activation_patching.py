"""Activation patching, batched: many sweep points in one forward, started at the patched layer and position.

For one (stream, layer), every point of a chunk is a copy of the base run; a hook on the stream overwrites,
for point i, the cells (positions x heads) it selects with the source run's activation. Three savings over
one full forward per point:
- the forward starts at the patched layer, from the base run's cached residual stream;
- causality: a patch whose first position is p leaves positions < p untouched, so only positions >= p are
  computed, attending to the base run's cached keys and values of the earlier positions;
- only each prompt's final position is unembedded.

denoising: base = corrupted prompts, source = clean prompts. noising: base = clean, source = corrupted.
"""

from __future__ import annotations

import itertools
import logging
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer
from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
from transformer_lens.utilities.activation_functions import apply_softcap

from circuitlab import chunks
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


def first_difference(pairs: PromptPairs) -> int:
    """The first position where any clean prompt differs from its corrupted twin. Every activation before it
    is the same in both runs (causality), so patching there changes nothing."""
    differs = (pairs.clean_tokens != pairs.corrupted_tokens).any(0)
    return int(differs.float().argmax()) if differs.any() else pairs.width


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


def memory_budget(device, configured_mb: int | None) -> int:
    """The activation budget of one forward in MiB: the configured value, else half the free memory of a CUDA
    device, else 1024."""
    if configured_mb:
        return int(configured_mb)
    if str(device).startswith("cuda") and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return max(256, int(free / 2**20 // 2))
    return 1024


def points_per_chunk(model: HookedTransformer, n_prompts: int, width: int, memory_budget_mb: int | None) -> int:
    """How many sweep points fit one forward within the memory budget (a rough activation estimate)."""
    memory_budget_mb = memory_budget(model.cfg.device, memory_budget_mb)
    cfg = model.cfg
    floats = n_prompts * width * (6 * cfg.d_model + 2 * cfg.d_mlp + 3 * cfg.n_heads * width) + n_prompts * cfg.d_vocab_out
    return max(1, int(memory_budget_mb * 2**20 // (floats * 4)))


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
    with torch.no_grad(), attn_result_enabled(model, needs_result), fused_gelu(model):
        # stop after the last block: only the final positions are unembedded
        n_layers = model.cfg.n_layers
        base_resid, base_cache = model.run_with_cache(base_tokens, names_filter=lambda n: n in base_hooks, stop_at_layer=n_layers)
        source_resid, source_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in source_hooks, stop_at_layer=n_layers)
        clean_final, corrupted_final = (final_position_logits(model, r, final_pos) for r in (base_resid, source_resid))
        if direction == "denoising":
            clean_final, corrupted_final = corrupted_final, clean_final
        score = lambda logits: point_metrics(logits, answer, wrong, metrics, clean_final, tracked, pairs.labels_differ)  # noqa: E731
        baselines = {"clean": score(clean_final[None]), "corrupted": score(corrupted_final[None])}

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
                    logits = _patched_final_logits(
                        model, layer, start, spec, base_cache, source, pos_masks[points].to(device),
                        None if heads is None else heads[points].to(device), final_pos, pairs.same_length,
                    )
                    return score(logits.view(len(points), pairs.n_pairs, -1))

                keys = chunks.point_keys(call, [locations[group[j]] for j in part])
                store(chunks.compute_or_load(keys, lambda part=part: halving_on_oom(compute, part)), [group[j] for j in part])
                bar.update(len(part))
        bar.close()
    as_floats = lambda d: {k: float(v[0]) for k, v in d.items()}  # noqa: E731
    return PatchingResult(locations, results, as_floats(baselines["clean"]), as_floats(baselines["corrupted"]))


def _source(cache, hook_name: str, transform) -> Tensor:
    return cache[hook_name] if transform is None else transform(cache[hook_name], hook_name)


def halving_on_oom(compute, points: list[int]) -> dict[str, Tensor]:
    """`compute(points)`, split in halves (recursively, logged) when the device runs out of memory."""
    try:
        return compute(points)
    except torch.cuda.OutOfMemoryError:
        if len(points) == 1:
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("out of memory on a chunk of %d sweep points: halving it and going on", len(points))
        half = len(points) // 2
        first, second = halving_on_oom(compute, points[:half]), halving_on_oom(compute, points[half:])
        return {name: torch.cat([first[name], second[name]]) for name in first}


def overhead_rows(device) -> int:
    """The fixed cost of one forward, in rows (prompt positions) of work: measured on a 2-core CPU with a
    GPT-2-small-shaped model; far larger on a GPU, where small batches leave it idle."""
    return 2048 if str(device).startswith("cuda") else 64


def plan_chunks(starts: list[int], max_points: int, n_prompts: int, width: int, overhead: int) -> list[tuple[list[int], int]]:
    """Split points into forwards: each forward computes positions from its earliest start on, so points of
    similar start share one. Minimises the rows computed plus `overhead` rows per forward (dynamic
    programming over the points sorted by start). Returns (point indices, start) per forward."""
    order = sorted(range(len(starts)), key=lambda j: starts[j])
    sorted_starts = [starts[j] for j in order]
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[i]: cost of the first i points
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for begin in range(max(0, end - max_points), end):
            cost = best[begin] + overhead + (end - begin) * n_prompts * (width - sorted_starts[begin])
            if cost < best[end]:
                best[end], cut[end] = cost, begin
    chunks, end = [], n
    while end > 0:
        begin = cut[end]
        chunks.append(([order[k] for k in range(begin, end)], sorted_starts[begin]))
        end = begin
    return chunks[::-1]


def first_patched_position(pos_masks: Bool[Tensor, "point batch pos"], model: HookedTransformer) -> Int[Tensor, " point"]:
    """The earliest position each point patches in any prompt (0 where causality cannot be used)."""
    if model.cfg.positional_embedding_type == "shortformer":
        return torch.zeros(pos_masks.shape[0], dtype=torch.int64)
    any_prompt = pos_masks.any(1)
    return torch.where(any_prompt.any(-1), any_prompt.float().argmax(-1), 0)


def _patched_final_logits(
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
) -> Float[Tensor, "point_batch vocab"]:
    """One batched forward over positions >= `start` from `layer` on, for points of one (stream, layer)."""
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
            resid = _second_half(model.blocks[layer], spec.name, resid, cached)
            first = layer + 1
        for index in range(first, model.cfg.n_layers):
            if index == last and index > layer and same_length and resid.shape[1] > 1:
                final_row = _last_block_final_row(model, resid, frozen_prefix(model, base_cache, index, start, n_points))
                return final_position_logits(model, final_row, torch.zeros_like(final_pos).repeat(n_points))
            resid = model.blocks[index](resid, past_kv_cache_entry=frozen_prefix(model, base_cache, index, start, n_points))
    return final_position_logits(model, resid, (final_pos - start).repeat(n_points))


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


def _second_half(block, stream: str, resid_pre: Tensor, cached) -> Tensor:
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


def _last_block_final_row(
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
