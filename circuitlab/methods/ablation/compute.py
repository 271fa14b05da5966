"""Ablations (seed 004): every location of the clean run replaced by `scale x` a resampled, mean or zero value,
or ablated along principal directions.

- resample: the value from the corrupted prompt of the same pair;
- mean: the mean over the clean prompts (per position);
- zero: zero (every scale gives the same);
- pca_<self|resample>_<top|orthogonal>: the seed's four PCA modes. Principal components are fitted per node
  (hook, and head for per-head streams) and per position on the task's activations (clean and corrupted
  prompts); P projects on the top `k`. With x the clean value and y the source (x itself for `self`, the
  corrupted prompt's value for `resample`):
      top:        x - P x + scale * P y            (only the top-k subspace changes)
      orthogonal: P x + scale * (y - P y)          (only its orthogonal complement changes)
The forward machinery is activation patching's (noising: base = clean prompts), with the source transformed.
The effect of a location is 1 - (ablated - corrupted) / (clean - corrupted) of the logit difference: 0 when the
ablation changes nothing, 1 when it moves the logit difference all the way to the corrupted run's.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from jaxtyping import Bool, Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.engine import chunks
from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location, cell_mask, head_mask, position_mask
from circuitlab.engine.forward import attn_result_enabled
from circuitlab.engine.sweep import PatchingResult, patch_sweep
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs

PCA_MODES = ("pca_self_top", "pca_self_orthogonal", "pca_resample_top", "pca_resample_orthogonal")
MODES = ("resample", "mean", "zero", *PCA_MODES)
SELF_SOURCED = ("mean", "pca_self_top", "pca_self_orthogonal")  # their source run is the clean prompts
RESAMPLE_FROM = ("corrupted", "dataset")


def check_scales(scales) -> list[float]:
    """Scales must be finite numbers (bool is not one)."""
    if not scales:
        raise ConfigError("method.scales", "null" if scales is None else "[]", "one or more numbers, e.g. [0, 0.5, 1, 2]")
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ConfigError("method.scales", scale, "finite numbers, e.g. [0, 0.5, 1, 2]")
    return [float(s) for s in scales]


def check_pca(mode: str, k: int, locations: list[Location], widths: dict[str, int | None]) -> None:
    """PCA modes need a positive k no larger than each swept stream's width (None: not known yet)."""
    if mode not in PCA_MODES:
        return
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError("method.k", k, "a positive integer (principal components per node)")
    for loc in locations:
        if STREAMS[loc.stream].name == "pattern":
            raise ConfigError("sweep.streams", loc.stream, "streams other than pattern (PCA modes fit vectors per position)")
        width = widths.get(loc.stream)
        if width is not None and k > width:
            raise ConfigError("method.k", k, f"1..{width} (stream {loc.stream} is {width} wide per node)")


# --- PCA ---------------------------------------------------------------------------------------------------

def principal_components(
    acts: Float[Tensor, "sample pos *head d"], k: int, valid: Bool[Tensor, "sample pos"]
) -> Float[Tensor, "pos *head k d"]:
    """Top-k principal directions (orthonormal rows) per position (and head), from the valid samples at each
    position, mean-centred. Where a position has fewer than k distinct samples the missing rows are zero."""
    n_pos, d = acts.shape[1], acts.shape[-1]
    out = torch.zeros(n_pos, *acts.shape[2:-1], k, d, dtype=acts.dtype, device=acts.device)
    for p in range(n_pos):
        x = acts[valid[:, p], p].float()  # sample *head d
        if x.shape[0] < 2:
            continue
        x = (x - x.mean(0, keepdim=True)).movedim(0, -2)  # *head sample d
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        top = vh[..., :k, :]
        out[p, ..., : top.shape[-2], :] = top.to(acts.dtype)
    return out


def project(x: Float[Tensor, "batch pos *head d"], components: Float[Tensor, "pos *head k d"]) -> Float[Tensor, "batch pos *head d"]:
    """P x: the part of x in the span of the components (per position and head)."""
    coefficients = x.unsqueeze(-2) @ components.transpose(-1, -2)  # batch pos *head 1 k
    return (coefficients @ components).squeeze(-2)


def pca_ablated(base: Tensor, source: Tensor, components: Tensor, scale: float, subspace: str) -> Tensor:
    """The seed's PCA ablation of `base`: the chosen subspace replaced by `scale` x the source's part in it."""
    if subspace == "top":
        return base - project(base, components) + scale * project(source, components)
    return project(base, components) + scale * (source - project(source, components))


# --- sweeps ------------------------------------------------------------------------------------------------

def make_transform(mode: str, scale: float, clean: dict[str, Tensor] | None = None, components: dict[str, Tensor] | None = None):
    """(source activation, hook name) -> the value patched in."""
    def transform(activation: Tensor, hook_name: str) -> Tensor:
        if mode == "zero":
            return torch.zeros_like(activation)
        if mode == "mean":
            return scale * activation.mean(0, keepdim=True).expand_as(activation)
        if mode in PCA_MODES:
            _, source, subspace = mode.split("_")
            base = activation if source == "self" else clean[hook_name]
            return pca_ablated(base, activation, components[hook_name], scale, subspace)
        return scale * activation

    return transform


def fit_components(model: HookedTransformer, pairs: PromptPairs, locations: list[Location], mode: str, k: int) -> tuple[dict, dict]:
    """The clean activations at the swept hooks and their top-k principal components (clean and corrupted
    prompts together, padding excluded)."""
    hooks = {loc.hook_name for loc in locations}
    clean = _activations(model, pairs.clean_tokens, hooks)
    corrupted = _activations(model, pairs.corrupted_tokens, hooks)
    valid = torch.arange(pairs.width)[None] < pairs.lengths[:, None]
    valid = torch.cat([valid, valid]).to(model.cfg.device)
    widths = {loc.stream: clean[loc.hook_name].shape[-1] for loc in locations}
    check_pca(mode, k, locations, widths)
    return clean, {h: principal_components(torch.cat([clean[h], corrupted[h]]), k, valid) for h in hooks}


def _activations(model: HookedTransformer, tokens: Tensor, hooks: set[str]) -> dict[str, Tensor]:
    needs_result = any(h.endswith("attn.hook_result") for h in hooks)
    with torch.no_grad(), attn_result_enabled(model, needs_result):
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in hooks)
    return {h: cache[h] for h in hooks}


def fit(model: HookedTransformer, pairs: PromptPairs, locations: list[Location], mode: str, k: int) -> tuple[dict | None, dict | None]:
    """What a mode needs besides the source run: for PCA modes the clean activations and the components."""
    return fit_components(model, pairs, locations, mode, k) if mode in PCA_MODES else (None, None)


def ablate(
    model: HookedTransformer, pairs: PromptPairs, locations: list[Location], mode: str, scales: list[float],
    memory_budget_mb: int | None = None, progress: bool = True, metrics: tuple[str, ...] = ("logit_diff",), tracked=None,
    k: int = 2, fitted: tuple[dict | None, dict | None] | None = None,
) -> dict[float, PatchingResult]:
    """One ablation sweep per scale."""
    if mode not in MODES:
        raise ConfigError("method.mode", mode, MODES)
    clean, components = fitted if fitted is not None else fit(model, pairs, locations, mode, k)
    source_pairs = clean_as_source(pairs) if mode in SELF_SOURCED else pairs
    results = {}
    for scale in scales:
        with chunks.scope(f"ablation:{mode}:k={k}:scale={scale!r}"):
            results[scale] = patch_sweep(model, source_pairs, locations, "noising", memory_budget_mb, progress, metrics, tracked,
                                         make_transform(mode, scale, clean, components))
    return results


def resampled_from_dataset(pairs: PromptPairs, seed: int) -> PromptPairs:
    """Each pair's source replaced by another prompt of the task (a clean or corrupted prompt of another pair, drawn
    with `seed`), with that prompt's label as the corrupted label (InterpBench resamples across the dataset)."""
    if not pairs.same_length:
        raise ConfigError("method.resample_from", "dataset", "corrupted (the task's prompts differ in length, so positions "
                          "of one prompt are not those of another)")
    n = pairs.n_pairs
    if n < 2:
        raise ConfigError("task.n_prompts", n, "2 or more for method.resample_from=dataset")
    generator = torch.Generator().manual_seed(seed)
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n  # never the pair itself
    corrupted_side = torch.randint(0, 2, (n,), generator=generator).bool()
    tokens = torch.where(corrupted_side[:, None], pairs.corrupted_tokens[other], pairs.clean_tokens[other])
    labels = None
    if pairs.corrupted_answer_tokens is not None:
        labels = torch.where(corrupted_side, pairs.corrupted_answer_tokens[other], pairs.answer_tokens[other])
    return replace(pairs, corrupted_tokens=tokens, corrupted_answer_tokens=labels)


def clean_as_source(pairs: PromptPairs) -> PromptPairs:
    """Mean and self-patching ablations transform the clean prompts' own activations: run them as the source
    (the sweep's corrupted baseline then reads as the clean one: `corrupted_logit_diff` gives the real one)."""
    return replace(pairs, corrupted_tokens=pairs.clean_tokens)


def ablate_together(model: HookedTransformer, pairs: PromptPairs, locations: list[Location], transform, self_sourced: bool) -> Float[Tensor, "batch vocab"]:
    """Final-position logits of the clean prompts with every location ablated at once (one forward)."""
    masks: dict[str, Tensor] = {}
    for loc in locations:
        stream = STREAMS[loc.stream]
        positions = position_mask([loc.positions], pairs.width, pairs.named_positions, pairs.n_pairs)[0]
        heads = head_mask([loc.heads], stream.n_heads(model.cfg)).expand(pairs.n_pairs, -1) if stream.has_heads else None
        ndim = 4 if stream.has_heads else 3
        mask = cell_mask(stream, positions, heads, ndim).to(model.cfg.device)
        masks[loc.hook_name] = masks[loc.hook_name] | mask if loc.hook_name in masks else mask
    source = _activations(model, pairs.clean_tokens if self_sourced else pairs.corrupted_tokens, set(masks))

    def patch(activation: Tensor, hook) -> Tensor:
        return torch.where(masks[hook.name], transform(source[hook.name], hook.name), activation)

    return final_logits(model, pairs.clean_tokens, pairs, [(name, patch) for name in masks])


def final_logits(model: HookedTransformer, tokens: Tensor, pairs: PromptPairs, hooks: list | None = None) -> Float[Tensor, "batch vocab"]:
    """Logits at each prompt's final position of one forward over `tokens` (with `hooks`, if any)."""
    hooks = hooks or []
    needs_result = any(name.endswith("attn.hook_result") for name, _ in hooks)
    with torch.no_grad(), attn_result_enabled(model, needs_result):
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=hooks)
    return logits[torch.arange(pairs.n_pairs, device=logits.device), pairs.final_positions.to(logits.device)]


def mean_logit_diff(logits: Float[Tensor, "batch vocab"], pairs: PromptPairs) -> float:
    device = logits.device
    return logit_diff(logits, pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)).mean().item()


def reference_corrupted(model: HookedTransformer, pairs: PromptPairs, mode: str, results: dict[float, PatchingResult],
                        resampled: bool = False) -> float:
    """The corrupted run's logit difference: already measured as the sweeps' source run, except for the
    self-sourced modes (their source run is the clean prompts) and sources resampled from the dataset."""
    if mode in SELF_SOURCED or resampled:
        return corrupted_logit_diff(model, pairs)
    return next(iter(results.values())).corrupted_logit_diff


def corrupted_logit_diff(model: HookedTransformer, pairs: PromptPairs) -> float:
    """The corrupted prompts' mean logit difference (the effect's reference point)."""
    return mean_logit_diff(final_logits(model, pairs.corrupted_tokens, pairs), pairs)
