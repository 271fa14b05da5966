"""Attribution patching: gradient estimates of each location's patching effect, with exact patching beside them."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import location_columns, patching_tensors, patching_sweep, swept_locations
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.metrics import usable_gap
from circuitlab.tasks.base import PromptPairs
from circuitlab.methods.activation_patching import method as activation_patching
from circuitlab.methods.attribution_patching import compute as attribution_patching

log = logging.getLogger("circuitlab")


def validate(cfg: DictConfig) -> None:
    activation_patching.validate(cfg)  # the same direction


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    return activation_patching.plan(cfg, shape, pairs, tokenizer, locations)


def shard_points(cfg: DictConfig, locations: list[Location], pairs: PromptPairs) -> tuple[int, str]:
    """Activation patching's points (the exact sweep beside the estimates); estimates alone are not chunked."""
    if not cfg.method.get("compare_exact", True):
        raise ConfigError("sweep.num_shards", cfg.sweep.num_shards, "1 for method=attribution_patching with compare_exact=false (the "
                          "estimates take one pass over every point; only the exact patching beside them is split into chunks)")
    return activation_patching.shard_points(cfg, locations, pairs)


def keeps_chunks(cfg: DictConfig) -> bool:
    """The exact patching beside the estimates keeps its finished chunks; the estimates alone keep nothing."""
    return bool(cfg.method.get("compare_exact", True))


def sweep_calls(cfg: DictConfig, plan: Plan) -> list:
    """Its chunked work, for the cost estimate (cost.py): the exact patching beside the estimates, when it runs."""
    return [(plan.locations, plan.pairs, False)] if cfg.method.get("compare_exact", True) else []


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Attribution estimates, with exact patching beside them when `compare_exact`."""
    sweep = patching_sweep(cfg, plan, model)
    locations = swept_locations(cfg, plan, sweep)
    estimates, clean_ld, corrupted_ld = attribution_patching.attribute(model, plan.pairs, locations, cfg.method.direction, cfg.memory_budget_mb, cfg.progress)
    exact = sweep(locations) if cfg.method.compare_exact else None
    rows = attribution_rows(cfg, locations, estimates, usable_gap(clean_ld, corrupted_ld), exact, plan.pairs)
    tensors = patching_tensors(exact, plan.pairs) if exact is not None else {}
    tensors["attribution"] = estimates
    extra = {"correlation_with_exact": correlations(locations, estimates, exact.logit_diff)} if exact is not None else {}
    clean, corrupted = (exact.clean, exact.corrupted) if exact is not None else ({"logit_diff": clean_ld}, {"logit_diff": corrupted_ld})
    return MethodOutput(rows, tensors, clean, corrupted, extra=extra)


def correlations(locations: list[Location], estimates, exact) -> dict[str, float]:
    """Pearson correlation of attribution and exact patching, per stream and over all locations."""
    out = {}
    for stream in dict.fromkeys(loc.stream for loc in locations):
        index = [i for i, loc in enumerate(locations) if loc.stream == stream]
        out[stream] = attribution_patching.pearson(estimates[index], exact[index])
    out["all"] = attribution_patching.pearson(estimates, exact)
    return out


def attribution_rows(cfg, locations, estimates, clean_minus_corrupted: float, exact, pairs: PromptPairs) -> list[dict]:
    """`attribution` (estimated change of the logit difference) and its normalised form (NaN where the gap is
    degenerate: `metrics.usable_gap`); with the exact run, `exact_change` (patched minus base logit difference) and
    `exact_normalized` beside them."""
    base = exact.corrupted_logit_diff if exact is not None and cfg.method.direction == "denoising" else None
    if exact is not None and base is None:
        base = exact.clean_logit_diff
    rows = []
    for i, location in enumerate(locations):
        common = location_columns(cfg, location, pairs)
        values = {"attribution": float(estimates[i]), "attribution_normalized": float(estimates[i]) / clean_minus_corrupted}
        if exact is not None:
            change = float(exact.logit_diff[i]) - base
            values.update(exact_change=change, exact_normalized=change / clean_minus_corrupted)
        rows += [{**common, "metric": name, "value": value} for name, value in values.items()]
    return rows
