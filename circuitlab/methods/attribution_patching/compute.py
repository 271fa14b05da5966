"""Attribution patching: the gradient (first-order) approximation of activation patching.

One forward on the base prompts keeps every swept activation and its gradient of the metric (one backward);
a location's attribution is sum over its patched cells of (source - base) * d metric / d activation. It estimates
the patched metric minus the base metric for all locations of a sweep at the cost of one forward and one backward
(over batches of prompts that fit the memory budget; only each prompt's final position is unembedded).
Normalised like patching: attribution / (clean - corrupted) estimates the normalised logit difference minus
its base value (0 for denoising, 1 for noising).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location, cell_mask, head_mask, position_mask
from circuitlab.engine.batching import backward_batch
from circuitlab.engine.forward import attn_result_enabled, final_position_logits
from circuitlab.engine.sweep import DIRECTIONS
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs


def attribute(
    model: HookedTransformer, pairs: PromptPairs, locations: list[Location], direction: str = "denoising",
    memory_budget_mb: int | None = None, progress: bool = False,
) -> tuple[Float[Tensor, " point"], float, float]:
    """Estimated change of the mean logit difference per location; also the clean and corrupted values. Prompts go
    through the forward and backward in batches that fit `memory_budget_mb` (the metric is a mean over prompts, so
    each prompt's terms are its own): the same sums, in parts."""
    if direction not in DIRECTIONS:
        raise ConfigError("method.direction", direction, DIRECTIONS)
    device = model.cfg.device
    clean, corrupted = pairs.clean_tokens.to(device), pairs.corrupted_tokens.to(device)
    base_tokens, source_tokens = (corrupted, clean) if direction == "denoising" else (clean, corrupted)
    final = pairs.final_positions.to(device)
    answer, wrong = pairs.answer_tokens.to(device), pairs.wrong_tokens.to(device)
    hooks = {loc.hook_name for loc in locations}
    masks = []
    for loc in locations:
        spec = STREAMS[loc.stream]
        cells = position_mask([loc.positions], pairs.width, pairs.named_positions, pairs.n_pairs)[0].to(device)
        masks.append((cells, head_mask([loc.heads], spec.n_heads(model.cfg)).to(device) if spec.has_heads else None))
    n, depth = pairs.n_pairs, model.cfg.n_layers
    estimates, base_sum, source_sum = torch.zeros(len(locations), dtype=torch.float64), 0.0, 0.0
    needs_result = any(STREAMS[loc.stream].needs_attn_result for loc in locations)
    with attn_result_enabled(model, needs_result):
        bar = tqdm(total=n, desc="attribution", unit="prompt", disable=not progress)
        for part in torch.arange(n, device=device).split(backward_batch(model, pairs.width, memory_budget_mb)):
            with torch.no_grad():
                resid, source_cache = model.run_with_cache(source_tokens[part], names_filter=lambda name: name in hooks, stop_at_layer=depth)
                source_sum += logit_diff(final_position_logits(model, resid, final[part]), answer[part], wrong[part]).sum().item()
            kept: dict[str, Tensor] = {}

            def keep(activation: Tensor, hook) -> Tensor:
                if activation.requires_grad:
                    activation.retain_grad()
                else:
                    activation.requires_grad_(True)
                kept[hook.name] = activation
                return activation

            with torch.enable_grad():
                resid = model.run_with_hooks(base_tokens[part], fwd_hooks=[(name, keep) for name in hooks], stop_at_layer=depth)
                metric = logit_diff(final_position_logits(model, resid, final[part]), answer[part], wrong[part]).sum()
                (metric / n).backward()  # the metric is the mean over all prompts: each prompt's terms carry 1/n
            base_sum += metric.item()
            for i, (loc, (cells, heads)) in enumerate(zip(locations, masks)):
                activation = kept[loc.hook_name]
                contribution = (source_cache[loc.hook_name] - activation.detach()) * activation.grad
                mask = cell_mask(STREAMS[loc.stream], cells[part], heads, contribution.dim())
                estimates[i] += torch.where(mask, contribution, 0).sum().item()
            del kept, source_cache, resid, metric
            bar.update(len(part))
        bar.close()
    base_ld, source_ld = base_sum / n, source_sum / n
    clean_ld, corrupted_ld = (source_ld, base_ld) if direction == "denoising" else (base_ld, source_ld)
    return estimates.float(), clean_ld, corrupted_ld


def pearson(a: Tensor, b: Tensor) -> float:
    """Pearson correlation of two vectors (nan when either is constant)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else float("nan")
