"""Exact edge patching: each edge patched alone, many per forward (circuitlab/edges/patching.py)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from circuitlab.config import plain
from circuitlab.edges import method as edges
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.patching import patch_edges
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError


contrasts = edges.contrasts


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    if cfg.method.bootstrap:  # its chunks are stored by edge name: a resample would load the full data's
        raise ConfigError("method.bootstrap", cfg.method.bootstrap, "0 for method=edge_patching (bootstrap scores with eap, eap_ig or ensemble)")
    if cfg.method.sample is not None:
        edges.whole_number(cfg.method.sample, "method.sample", "a number of edges >= 1, or null for every edge in method.edges")
    chosen = plain(cfg.method.edges)
    if chosen != "all" and (not isinstance(chosen, list) or not chosen):
        raise ConfigError("method.edges", chosen, "all, or a non-empty list of edges such as [input->a0.h0<q>, m0->logits]")


def plan(cfg: DictConfig, shape, pairs, tokenizer, locations):
    locations, graph = edges.plan(cfg, shape, pairs, tokenizer, locations)
    chosen = selected_edges(cfg, graph)
    if cfg.method.sample is not None and cfg.method.sample > len(chosen):
        raise ConfigError("method.sample", cfg.method.sample, f"1..{len(chosen)} (the edges in method.edges)")
    return locations, graph


def selected_edges(cfg: DictConfig, graph: EdgeGraph) -> list[tuple[int, int]]:
    """method.edges (all, or the named ones), then a seeded sample of them when method.sample is set."""
    chosen = plain(cfg.method.edges)
    edge_list = list(graph.edges) if chosen == "all" else [graph.parse_edge(name, "method.edges") for name in chosen]
    if len(set(edge_list)) != len(edge_list):
        raise ConfigError("method.edges", chosen, "each edge once")
    if cfg.method.sample is not None and cfg.method.sample < len(edge_list):
        generator = torch.Generator().manual_seed(int(cfg.seed))
        picked = torch.randperm(len(edge_list), generator=generator)[: cfg.method.sample].sort().values.tolist()
        edge_list = [edge_list[i] for i in picked]
    return edge_list


def shard_points(cfg: DictConfig, locations, pairs) -> tuple[int, str]:
    """The edges patched (each chunk holds edges of one receiver block)."""
    from circuitlab.models import loading

    return len(selected_edges(cfg, EdgeGraph.of(loading.model_shape(cfg.model)))), "edges"


def selection(cfg: DictConfig) -> str | None:
    """What chose the edges, in the config's words (None: every edge)."""
    listed = plain(cfg.method.edges) != "all"
    if cfg.method.sample is not None:
        return f"method.sample={cfg.method.sample} (seed {cfg.seed})" + (" of the edges in method.edges" if listed else "")
    return "method.edges" if listed else None


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    graph = plan.method_plan
    chosen = selected_edges(cfg, graph)

    def score():
        patched, clean_ld = patch_edges(model, plan.pairs, graph, cfg.method.counterfactual, chosen, cfg.memory_budget_mb, cfg.progress)
        scores = torch.full((len(graph.senders), len(graph.receivers)), float("nan"))
        scores[~graph.real] = 0.0
        for (s, r), value in zip(chosen, patched.tolist()):
            scores[s, r] = clean_ld - value
        return scores, {"edges_selected": len(chosen), "edges_patched": int((~torch.isnan(patched)).sum())}

    described = selection(cfg)
    return edges.run_edges(cfg, plan, model, score, chosen if described else None, described)
