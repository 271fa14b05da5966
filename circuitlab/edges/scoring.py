"""The run EAP and EAP-IG share: every edge scored with the gradients their config names (attribution.py,
integration.py), the circuit and the curve from edges/method.py's `run_edges`, and at `method.level` node or
neuron the node scores beside them (nodes.py): nodes.csv and `node_scores` / `neuron_scores` in results.pt."""

from __future__ import annotations

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.edges import nodes
from circuitlab.edges.attribution import attribute
from circuitlab.edges.integration import INTEGRATIONS
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError


def check_level(cfg: DictConfig) -> None:
    if cfg.method.level not in nodes.LEVELS:
        raise ConfigError("method.level", cfg.method.level, nodes.LEVELS)


def check_integration(cfg: DictConfig, field: str, value: str, allowed: tuple[str, ...]) -> None:
    """`value` one of `allowed`; clean-corrupted needs the corrupted prompts (as MIB's reference refuses it too)."""
    if value not in allowed:
        raise ConfigError(field, value, allowed)
    if value == "clean-corrupted" and cfg.method.counterfactual != "patching":
        raise ConfigError("method.counterfactual", cfg.method.counterfactual,
                          f"patching with {field}=clean-corrupted (its second gradient is the corrupted run's)")


def run_scored(cfg: DictConfig, plan: Plan, model, integration: str, steps: int, extra: dict) -> MethodOutput:
    """run_edges with `attribute`'s edge scores; nodes.csv and the node / neuron tensors at level node / neuron."""
    assert integration in INTEGRATIONS
    level = cfg.method.level
    found = {}

    def score():
        result = attribute(model, plan.pairs, plan.method_plan, cfg.method.counterfactual, integration, steps, cfg.method.batch_size,
                           cfg.progress, cfg.memory_budget_mb, neurons=level != "edge")
        found["neurons"] = result.neurons
        return result.edges, {**extra, "level": level}

    output = edges.run_edges(cfg, plan, model, score)
    if level != "edge":
        neurons = found["neurons"]
        output.tables["nodes.csv"] = nodes.nodes_table(plan.method_plan, neurons, level)
        output.tensors["node_scores"] = neurons.sum(1)
        if level == "neuron":
            output.tensors["neuron_scores"] = neurons
    return output
