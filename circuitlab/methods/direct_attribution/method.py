"""Logit lens and direct logit attribution (seed 001) at the final position."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from circuitlab.checks import refuse_sweep_keys, require_list
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.tasks.base import PromptPairs
from circuitlab.methods.direct_attribution import compute as direct_attribution

log = logging.getLogger("circuitlab")


ANALYSES = ("logit_lens", "layers", "heads")
PROMPTS = ("corrupted", "clean")


def validate(cfg: DictConfig) -> None:
    require_list("method.analyses", cfg.method.analyses, "[logit_lens, layers, heads]")
    for analysis in cfg.method.analyses:
        if analysis not in ANALYSES:
            raise ConfigError("method.analyses", analysis, ANALYSES)
    if cfg.method.prompts not in PROMPTS:
        raise ConfigError("method.prompts", cfg.method.prompts, PROMPTS)
    refuse_sweep_keys(cfg, "reads every layer and head at each prompt's final position", {"positions": ("every", ["all"], ["END"])})


def contrasts(cfg: DictConfig) -> bool:
    """It reads one prompt of each pair (`method.prompts`): identical clean and corrupted prompts are fine."""
    return False


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """It reads the whole model at the final position: no sweep points."""
    return [], None


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Logit lens, per-layer and per-head direct attribution at the final position; the manifest records how
    far the per-layer decomposition is from the measured logit difference (the seed's sanity check)."""
    result = direct_attribution.direct_attribution(model, plan.pairs, cfg.method.prompts, cfg.method.incl_mid)
    analyses = set(cfg.method.analyses)
    common = {"experiment": cfg.name, "method": cfg.method.name, "heads": "", "group": "", "position": "END", "position_label": "END", "receiver": ""}
    rows = []
    if "logit_lens" in analyses:
        rows += [{**common, "stream": s, "layer": l, "head": None, "metric": "logit_lens", "value": v} for s, l, v in result.lens]
    for name, layer, head, value in result.components:
        wanted = "layers" if name in direct_attribution.LAYER_COMPONENTS else "heads"
        if wanted in analyses:
            rows.append({**common, "stream": name, "layer": layer, "head": head, "heads": "" if head is None else str(head), "metric": "dla", "value": value})
    log.info("logit diff %.4f | per-layer decomposition + constant differs by %.2e", result.logit_diff, result.decomposition_error)
    measured = {"logit_diff": result.logit_diff}
    extra = {"prompts": cfg.method.prompts, "measured_logit_diff": result.logit_diff, "constant": result.constant,
             "uncapped_logit_diff": result.uncapped_logit_diff, "decomposition_error": result.decomposition_error}
    clean, corrupted = (measured, {}) if cfg.method.prompts == "clean" else ({}, measured)
    return MethodOutput(rows, {"lens": torch.tensor([v for _, _, v in result.lens])}, clean, corrupted, extra=extra)
