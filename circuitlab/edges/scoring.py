"""The run EAP and EAP-IG share: every edge scored with the gradients their config names (attribution.py,
integration.py), the circuit and the curve from edges/method.py's `run_edges`, and at `method.level` node or
neuron the node scores beside them (nodes.py): nodes.csv and `node_scores` / `neuron_scores` in results.pt, and
MIB's node- or neuron-level faithfulness curve ({level}_faithfulness.csv, the manifest's {level}_cpr / _cmd)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.config import plain
from circuitlab.edges import method as edges
from circuitlab.edges import nodes
from circuitlab.edges.attribution import attribute
from circuitlab.edges.integration import INTEGRATIONS
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError

log = logging.getLogger("circuitlab")


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

    def score(pairs=None):  # pairs: a resample of the prompts (method.bootstrap, edges/method.py); None: the run's
        result = attribute(model, plan.pairs if pairs is None else pairs, plan.method_plan, cfg.method.counterfactual, integration, steps,
                           cfg.method.batch_size, cfg.progress, cfg.memory_budget_mb, neurons=level != "edge" and pairs is None)
        if pairs is None:
            found["neurons"] = result.neurons
        return result.edges, {**extra, "level": level}

    output = edges.run_edges(cfg, plan, model, score)
    if level != "edge":
        neurons = found["neurons"]
        output.tables["nodes.csv"] = nodes.nodes_table(plan.method_plan, neurons, level)
        output.tensors["node_scores"] = neurons.sum(1)
        if level == "neuron":
            output.tensors["neuron_scores"] = neurons
        if "cpr" in output.extra and plain(cfg.method.curve):
            table, areas = level_curve(cfg, plan, model, level, neurons, output.extra)
            output.tables[f"{level}_faithfulness.csv"] = table
            output.extra.update(areas)
            shown = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
            log.info("%s-level curve (MIB's): %d circuits | CPR %s | CMD %s", level, len(table), shown(areas[f"{level}_cpr"]),
                     shown(areas[f"{level}_cmd"]))
    return output


def level_curve(cfg: DictConfig, plan: Plan, model, level: str, neurons, extra: dict):
    """MIB's node- or neuron-level curve at method.curve's percentages: node circuits through the edges' masked
    forward, neuron circuits through neuron_circuits.py (the empty and full circuits' logit differences from the
    edge run)."""
    from circuitlab.edges import counterfactual as cf
    from circuitlab.edges import neuron_circuits
    from circuitlab.edges.masked import circuits_logit_diff

    graph = plan.method_plan
    sources = cf.prepare(model, plan.pairs, graph, cfg.method.counterfactual, cfg.method.batch_size or plan.pairs.n_pairs)
    percentages = [float(p) for p in plain(cfg.method.curve)]
    baselines = extra["empty_logit_diff"], extra["full_logit_diff"]
    if level == "node":
        def evaluate(masks):
            return circuits_logit_diff(model, plan.pairs, graph, sources, masks, cfg.memory_budget_mb, cfg.progress)[0]

        return nodes.node_curve(graph, neurons.sum(1), percentages, evaluate, *baselines)

    def evaluate(keep):
        return neuron_circuits.neuron_circuits_logit_diff(model, plan.pairs, graph, sources, keep, cfg.memory_budget_mb)

    return neuron_circuits.neuron_curve(neurons, percentages, evaluate, *baselines)
