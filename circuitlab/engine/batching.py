"""How many sweep points one forward takes: the memory budget, chunk planning, and halving on CUDA OOM."""

from __future__ import annotations

import logging

import torch
from torch import Tensor
from transformer_lens import HookedTransformer

log = logging.getLogger("circuitlab")


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

def backward_batch(model: HookedTransformer, width: int, memory_budget_mb: int | None) -> int:
    """Prompts per forward and backward through the whole model, every position, within the memory budget: autograd
    keeps every layer's activations (18 d_model + 7 d_mlp + 6 n_heads x width floats per position and layer: 39 MB
    per 15-token prompt measured on SmolLM2-135M) and about one copy of the frozen weights (385 MB measured there)."""
    cfg = model.cfg
    budget = memory_budget(cfg.device, memory_budget_mb) * 2**20
    element = torch.empty((), dtype=cfg.dtype).element_size()
    weights = cfg.n_layers * (4 * cfg.d_model * cfg.n_heads * cfg.d_head + 3 * cfg.d_model * (cfg.d_mlp or 0)) * element
    per_prompt = cfg.n_layers * width * (18 * cfg.d_model + 7 * (cfg.d_mlp or 0) + 6 * cfg.n_heads * width) * element
    return max(1, int((budget - weights) // per_prompt))

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
    """The fixed cost of one forward, in rows (prompt positions) of work: measured on a 2-core CPU (mostly each
    block's weights read from memory once per forward): 32 is best for a SmolLM2-shaped model (a layer x position
    sweep 21 s against 29 s with 64), the same as 64 for a GPT-2-small-shaped one; far larger on a GPU, where small
    batches leave it idle."""
    return 2048 if str(device).startswith("cuda") else 32

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
