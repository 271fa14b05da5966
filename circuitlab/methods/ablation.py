"""Ablations (seed 004): every location of the clean run replaced by `scale x` a resampled, mean or zero value.

- resample: the value from the corrupted prompt of the same pair;
- mean: the mean over the clean prompts (per position);
- zero: zero (every scale gives the same).
The forward machinery is activation patching's (noising: base = clean prompts), with the source transformed.
The effect of a location is 1 - (ablated - corrupted) / (clean - corrupted) of the logit difference: 0 when the
ablation changes nothing, 1 when it moves the logit difference all the way to the corrupted run's.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.methods.activation_patching import PatchingResult, patch_sweep
from circuitlab.tasks.base import PromptPairs

MODES = ("resample", "mean", "zero")


def check_scales(scales) -> list[float]:
    """Scales must be numbers (bool is not one)."""
    if not scales:
        raise ConfigError("method.scales", "[]", "one or more numbers, e.g. [0, 0.5, 1, 2]")
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ConfigError("method.scales", scale, "numbers, e.g. [0, 0.5, 1, 2]")
    return [float(s) for s in scales]


def _scaled(activation: Tensor, scale: float, mode: str) -> Tensor:
    if mode == "zero":
        return torch.zeros_like(activation)
    if mode == "mean":
        activation = activation.mean(0, keepdim=True).expand_as(activation)
    return scale * activation


def ablate(
    model: HookedTransformer, pairs: PromptPairs, locations: list[Location], mode: str, scales: list[float],
    memory_budget_mb: int | None = None, progress: bool = True, metrics: tuple[str, ...] = ("logit_diff",), tracked=None,
) -> dict[float, PatchingResult]:
    """One ablation sweep per scale."""
    if mode not in MODES:
        raise ConfigError("method.mode", mode, MODES)
    source_pairs = pairs if mode != "mean" else _clean_as_source(pairs)
    out = {}
    for scale in scales:
        transform = partial(_scaled, scale=scale, mode=mode)
        out[scale] = patch_sweep(model, source_pairs, locations, "noising", memory_budget_mb, progress, metrics, tracked, transform)
    return out


def _clean_as_source(pairs: PromptPairs) -> PromptPairs:
    """Mean ablation averages the clean prompts' own activations: run them as the source too (the sweep's
    corrupted baseline then reads as the clean one: `corrupted_logit_diff` gives the real one)."""
    from dataclasses import replace

    return replace(pairs, corrupted_tokens=pairs.clean_tokens)


def reference_corrupted(model: HookedTransformer, pairs: PromptPairs, mode: str, results: dict[float, PatchingResult]) -> float:
    """The corrupted run's logit difference: already measured as the sweeps' source run, except for mean
    ablation, whose source run is the clean prompts."""
    if mode == "mean":
        return corrupted_logit_diff(model, pairs)
    return next(iter(results.values())).corrupted_logit_diff


def corrupted_logit_diff(model: HookedTransformer, pairs: PromptPairs) -> float:
    """The corrupted prompts' mean logit difference (the effect's reference point)."""
    from circuitlab.metrics import logit_diff

    with torch.no_grad():
        logits = model(pairs.corrupted_tokens.to(model.cfg.device))
    rows = torch.arange(pairs.n_pairs, device=logits.device)
    final = logits[rows, pairs.final_positions.to(logits.device)]
    return logit_diff(final, pairs.answer_tokens.to(logits.device), pairs.wrong_tokens.to(logits.device)).mean().item()
