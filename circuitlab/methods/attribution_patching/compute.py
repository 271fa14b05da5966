"""Attribution patching: the gradient (first-order) approximation of activation patching.

One forward on the base prompts keeps every swept activation and its gradient of the metric (one backward);
a location's attribution is sum over its patched cells of (source - base) * d metric / d activation. It estimates
the patched metric minus the base metric for all locations of a sweep at the cost of one forward and one backward.
Normalised like patching: attribution / (clean - corrupted) estimates the normalised logit difference minus
its base value (0 for denoising, 1 for noising).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location, cell_mask, head_mask, position_mask
from circuitlab.engine.forward import attn_result_enabled
from circuitlab.engine.sweep import DIRECTIONS
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs


def attribute(
    model: HookedTransformer, pairs: PromptPairs, locations: list[Location], direction: str = "denoising"
) -> tuple[Float[Tensor, " point"], float, float]:
    """Estimated change of the mean logit difference per location; also the clean and corrupted values."""
    if direction not in DIRECTIONS:
        raise ConfigError("method.direction", direction, DIRECTIONS)
    device = model.cfg.device
    clean, corrupted = pairs.clean_tokens.to(device), pairs.corrupted_tokens.to(device)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    rows = torch.arange(pairs.n_pairs, device=device)
    final = pairs.final_positions.to(device)
    answer, wrong = pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)
    hooks = {loc.hook_name for loc in locations}
    needs_result = any(STREAMS[loc.stream].needs_attn_result for loc in locations)
    with attn_result_enabled(model, needs_result):
        with torch.no_grad():
            source_logits, source_cache = model.run_with_cache(source_tokens, names_filter=lambda n: n in hooks)
        kept: dict[str, Tensor] = {}

        def keep(activation: Tensor, hook) -> Tensor:
            if activation.requires_grad:
                activation.retain_grad()
            else:
                activation.requires_grad_(True)
            kept[hook.name] = activation
            return activation

        with torch.enable_grad():
            base_logits = model.run_with_hooks(base_tokens, fwd_hooks=[(name, keep) for name in hooks])
            metric = logit_diff(base_logits[rows, final], answer, wrong).mean()
            metric.backward()
    base_ld = metric.item()
    source_ld = logit_diff(source_logits[rows, final], answer, wrong).mean().item()
    estimates = torch.empty(len(locations))
    for i, loc in enumerate(locations):
        spec = STREAMS[loc.stream]
        activation = kept[loc.hook_name]
        contribution = (source_cache[loc.hook_name] - activation.detach()) * activation.grad
        cells = position_mask([loc.positions], pairs.width, pairs.named_positions, pairs.n_pairs)[0].to(device)
        heads = head_mask([loc.heads], spec.n_heads(model.cfg)).to(device) if spec.has_heads else None
        mask = cell_mask(spec, cells, heads, contribution.dim())
        # the metric is a mean over prompts, so the per-prompt terms already carry the 1/n
        estimates[i] = torch.where(mask, contribution, 0).sum().item()
    clean_ld, corrupted_ld = (source_ld, base_ld) if direction == "denoising" else (base_ld, source_ld)
    return estimates, clean_ld, corrupted_ld


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two vectors (nan when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float("nan")
