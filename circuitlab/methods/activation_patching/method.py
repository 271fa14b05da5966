"""Activation patching: the engine's batched sweep over the planned locations (its run and its planning)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import patching_rows, patching_tensors, patching_sweep, swept_locations
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.tasks.base import PromptPairs
from circuitlab.engine import sweep

log = logging.getLogger("circuitlab")


def validate(cfg: DictConfig) -> None:
    if cfg.method.direction not in sweep.DIRECTIONS:
        raise ConfigError("method.direction", cfg.method.direction, sweep.DIRECTIONS)


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """Nothing of its own to plan: the sweep's locations as they are."""
    return locations, None


def shard_points(cfg: DictConfig, locations: list[Location], pairs: PromptPairs) -> tuple[int, str]:
    return sweep.patching_points(locations, pairs), "points that patch a position where clean and corrupted prompts differ"


def sweep_calls(cfg: DictConfig, plan: Plan) -> list[tuple[list[Location], PromptPairs, bool]]:
    """Its patching sweeps, for the cost estimate (cost.py): one over the planned locations (cumulative head groups
    ranked by their own effects add a sweep over single heads first)."""
    return [(plan.locations, plan.pairs, False)]


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    sweep = patching_sweep(cfg, plan, model)
    result = sweep(swept_locations(cfg, plan, sweep))
    return MethodOutput(patching_rows(cfg, result, plan.pairs), patching_tensors(result, plan.pairs), result.clean, result.corrupted)
