"""Tidy rows and tensors of a patching-style sweep (one row per location and metric), the location columns every
method's rows share, and cumulative head groups ranked by each head's own effect."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from circuitlab.engine.records import Plan
from circuitlab.engine.sweep import PatchingResult, patch_sweep
from circuitlab.locations import STREAMS, Location, heads_value, position_label, position_value
from circuitlab.tasks.base import PromptPairs


def ranked_cumulative(locations: list[Location], sweep, shape) -> list[Location]:
    """Cumulative head groups in computed order: per (stream, layer, positions), heads ranked by the metric
    each one alone reaches (largest first). `shape` gives each stream's head count."""
    heads_of = lambda stream: range(STREAMS[stream].n_heads(shape))  # noqa: E731
    singles = list(dict.fromkeys(Location(l.stream, l.layer, l.positions, (h,), "", h) for l in locations for h in heads_of(l.stream)))
    effect = dict(zip(singles, sweep(singles).logit_diff.tolist()))
    out = []
    for key in dict.fromkeys((l.stream, l.layer, l.positions) for l in locations):
        ranked = sorted(heads_of(key[0]), key=lambda h: -effect[Location(*key, (h,), "", h)])
        out += [Location(*key, tuple(ranked[: i + 1]), "cumulative", h) for i, h in enumerate(ranked)]
    return out

def location_columns(cfg: DictConfig, location: Location, pairs: PromptPairs) -> dict:
    return {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "stream": location.stream,
        "layer": location.layer,
        "head": location.head,
        "heads": heads_value(location.heads),
        "group": location.group,
        "position": position_value(location.positions),
        "position_label": position_label(location.positions, pairs.first_prompt_tokens),
    }

def patching_rows(cfg: DictConfig, result: PatchingResult, pairs: PromptPairs) -> list[dict]:
    values = {**result.metrics, "logit_diff_normalized": result.normalized}
    order = ["logit_diff", "logit_diff_normalized", *[m for m in result.metrics if m != "logit_diff"]]
    rows = []
    for i, location in enumerate(result.locations):
        common = location_columns(cfg, location, pairs)
        rows += [{**common, "metric": name, "value": float(values[name][i])} for name in order]
    return rows

def patching_tensors(result: PatchingResult, pairs: PromptPairs) -> dict:
    """`<stream>/<metric>`: Tensor[layer, head point, position] (no head axis for streams patched whole), in
    sweep order, plus the axes' labels and the baselines."""
    layers = sorted({loc.layer for loc in result.locations})
    positions = list(dict.fromkeys(loc.positions for loc in result.locations))
    out: dict[str, object] = {
        "layers": torch.tensor(layers),
        "position_labels": [position_label(p, pairs.first_prompt_tokens) for p in positions],
        "clean_logit_diff": torch.tensor(result.clean_logit_diff),
        "corrupted_logit_diff": torch.tensor(result.corrupted_logit_diff),
    }
    values = {**result.metrics, "logit_diff_normalized": result.normalized}
    for stream in dict.fromkeys(loc.stream for loc in result.locations):
        mine = [(i, loc) for i, loc in enumerate(result.locations) if loc.stream == stream]
        head_points = list(dict.fromkeys((loc.heads, loc.group, loc.head) for _, loc in mine))
        with_heads = head_points != [(None, "", None)]
        if with_heads:
            out[f"{stream}/head_points"] = [f"{group}:{head}:{heads_value(heads)}" for heads, group, head in head_points]
        for metric, tensor in values.items():
            grid = torch.full((len(layers), len(head_points), len(positions)), float("nan"))
            for i, loc in mine:
                grid[layers.index(loc.layer), head_points.index((loc.heads, loc.group, loc.head)), positions.index(loc.positions)] = float(tensor[i])
            out[f"{stream}/{metric}"] = grid if with_heads else grid[:, 0]
    return out


def patching_sweep(cfg: DictConfig, plan: Plan, model):
    """The activation-patching sweep of the run's config, as a function of the locations."""
    return lambda locs: patch_sweep(  # noqa: E731
        model, plan.pairs, locs, cfg.method.direction, cfg.memory_budget_mb, cfg.progress, tuple(cfg.method.metrics), plan.tracked,
    )


def swept_locations(cfg: DictConfig, plan: Plan, sweep) -> list[Location]:
    if cfg.sweep.heads == "cumulative" and not cfg.sweep.get("head_order"):
        return ranked_cumulative(plan.locations, sweep, plan.shape)
    return plan.locations
