"""EAP-IG: gradients averaged over `ig_steps` input interpolations (circuitlab/edges/attribution.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges.attribution import edge_scores
from circuitlab.engine.records import MethodOutput, Plan

plan, contrasts = edges.plan, edges.contrasts
MAX_IG_STEPS = 1000  # each step is a forward and a backward of every prompt; EAP-IG papers use 5 to 100


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    edges.whole_number(cfg.method.ig_steps, "method.ig_steps", f"a whole number of steps from 1 to {MAX_IG_STEPS} (1 is EAP; MIB uses 5)",
                       maximum=MAX_IG_STEPS)


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    def score():
        scores = edge_scores(model, plan.pairs, plan.method_plan, cfg.method.counterfactual, cfg.method.ig_steps,
                             cfg.method.batch_size, cfg.progress, cfg.memory_budget_mb)
        return scores, {"ig_steps": cfg.method.ig_steps}

    return edges.run_edges(cfg, plan, model, score)
