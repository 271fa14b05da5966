"""EAP: every edge's gradient x activation-difference score (circuitlab/edges/attribution.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges.attribution import edge_scores
from circuitlab.engine.records import MethodOutput, Plan

validate, plan, contrasts = edges.validate, edges.plan, edges.contrasts


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    def score():
        scores = edge_scores(model, plan.pairs, plan.method_plan, cfg.method.counterfactual, None, cfg.method.batch_size, cfg.progress,
                             cfg.memory_budget_mb)
        return scores, {}

    return edges.run_edges(cfg, plan, model, score)
