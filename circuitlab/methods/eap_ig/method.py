"""EAP-IG: gradients averaged over `ig_steps` input interpolations (circuitlab/edges/attribution.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges.attribution import edge_scores
from circuitlab.engine.records import MethodOutput, Plan

plan = edges.plan


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    edges.whole_number(cfg.method.ig_steps, "method.ig_steps", "a whole number of steps >= 1 (1 is EAP; MIB uses 5)")


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    def score():
        scores = edge_scores(model, plan.pairs, plan.method_plan, cfg.method.counterfactual, cfg.method.ig_steps,
                             cfg.method.batch_size, cfg.progress)
        return scores, {"ig_steps": cfg.method.ig_steps}

    return edges.run_edges(cfg, plan, model, score)
