"""Ensembles: each member method's edge scores on the same prompts, normalised and combined
(circuitlab/edges/selection.py), then the circuit and curve of circuitlab/edges/method.py."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from circuitlab.config import plain
from circuitlab.edges import method as edges
from circuitlab.edges import selection
from circuitlab.edges.attribution import attribute
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.patching import patch_edges
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError

log = logging.getLogger("circuitlab")

plan, contrasts = edges.plan, edges.contrasts
MAX_IG_STEPS = 1000  # as eap_ig's
MEMBERS = {"eap": ("clean", False), "eap_ig": ("inputs", True), "eap_ig_activations": ("activations", True), "edge_patching": (None, False)}


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    m = cfg.method
    members = plain(m.members)
    if not isinstance(members, list) or len(members) < 2 or any(name not in MEMBERS for name in members) or len(set(members)) != len(members):
        raise ConfigError("method.members", members, f"a list of at least two different methods from {list(MEMBERS)}")
    if m.combine not in selection.COMBINE:
        raise ConfigError("method.combine", m.combine, selection.COMBINE)
    edges.whole_number(m.ig_steps, "method.ig_steps", f"a whole number of steps from 1 to {MAX_IG_STEPS}", maximum=MAX_IG_STEPS)
    if m.bootstrap and "edge_patching" in members:
        raise ConfigError("method.bootstrap", m.bootstrap, "0 with the edge_patching member (its chunks are stored by edge: a resample would load the full data's)")


def member_scores(cfg: DictConfig, model, pairs, graph: EdgeGraph, name: str) -> torch.Tensor:
    """One member's scores of every edge on `pairs`."""
    m = cfg.method
    integration, integrated = MEMBERS[name]
    if integration is None:
        patched, clean_ld = patch_edges(model, pairs, graph, m.counterfactual, list(graph.edges), cfg.memory_budget_mb, cfg.progress)
        scores = torch.zeros(graph.real.shape)
        senders, receivers = (torch.tensor(index) for index in zip(*graph.edges))
        scores[senders, receivers] = clean_ld - patched
        return scores
    steps = m.ig_steps if integrated else 1
    return attribute(model, pairs, graph, m.counterfactual, integration, steps, m.batch_size, cfg.progress, cfg.memory_budget_mb).edges


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    graph = plan.method_plan
    members = plain(cfg.method.members)
    largest = {}

    def score(pairs=None):  # pairs: a resample of the prompts (method.bootstrap); None: the run's
        found = [member_scores(cfg, model, plan.pairs if pairs is None else pairs, graph, name) for name in members]
        if pairs is None:
            largest.update({name: float(s[graph.real].abs().max()) for name, s in zip(members, found)})
            log.info("ensemble: %s of %s, each divided by its largest |score| (%s)", cfg.method.combine, ", ".join(members),
                     ", ".join(f"{name} {value:.3g}" for name, value in largest.items()))
        return selection.combine(found, cfg.method.combine, graph.real), {"members": members, "combine": cfg.method.combine,
                                                                          "member_max_abs_score": largest}

    return edges.run_edges(cfg, plan, model, score)
