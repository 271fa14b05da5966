"""EAP: every edge's gradient x activation-difference score (circuitlab/edges/attribution.py); with
`gradient_at=clean-corrupted` MIB's clean-corrupted baseline (integration.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges import scoring
from circuitlab.engine.records import MethodOutput, Plan

plan, contrasts = edges.plan, edges.contrasts
GRADIENTS = ("clean", "clean-corrupted")


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    scoring.check_integration(cfg, "method.gradient_at", cfg.method.gradient_at, GRADIENTS)
    scoring.check_level(cfg)


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    return scoring.run_scored(cfg, plan, model, cfg.method.gradient_at, 1, {"gradient_at": cfg.method.gradient_at})
