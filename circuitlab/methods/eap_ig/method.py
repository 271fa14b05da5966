"""EAP-IG: gradients averaged over `ig_steps` points on a line from the counterfactual to the clean run, of the
input embeddings or of each component's output (circuitlab/edges/attribution.py, integration.py)."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges import scoring
from circuitlab.engine.records import MethodOutput, Plan

plan, contrasts = edges.plan, edges.contrasts
MAX_IG_STEPS = 1000  # each step is a forward and a backward of every prompt; EAP-IG papers use 5 to 100
IG_OVER = ("inputs", "activations", "activations-mib")


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    edges.whole_number(cfg.method.ig_steps, "method.ig_steps", f"a whole number of steps from 1 to {MAX_IG_STEPS} (1 is EAP; MIB uses 5)",
                       maximum=MAX_IG_STEPS)
    scoring.check_integration(cfg, "method.ig_over", cfg.method.ig_over, IG_OVER)
    scoring.check_level(cfg)


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    return scoring.run_scored(cfg, plan, model, cfg.method.ig_over, cfg.method.ig_steps,
                              {"ig_steps": cfg.method.ig_steps, "ig_over": cfg.method.ig_over})
