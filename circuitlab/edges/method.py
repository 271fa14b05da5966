"""What the three edge methods share: their checks, planning, and the run that turns scores into the outputs.

A run scores every edge (the method's own `score` function), cuts a circuit from the scores, evaluates it and
MIB's faithfulness curve with masked forwards, and writes
- results.csv: one row per edge (`sender`, `receiver`, metric `score`: the drop of the mean logit difference when
  the edge alone takes its counterfactual value, estimated by EAP / EAP-IG, exact for edge patching);
- edges.csv: sender, receiver, edge, score, rank (by |score|), in_circuit;
- faithfulness.csv: per ranking (signed / absolute) and percentage, the edges kept after pruning and the
  faithfulness; the chosen circuit's row too;
- circuit.json: the EAP-IG Graph JSON (cfg, nodes, edges with score and in_graph);
- manifest: CPR, CMD, the circuit's faithfulness, AUROC against `method.expected` when given;
- with `method.bootstrap` B: a `frequency` column in edges.csv (edges/selection.py); with `method.export: [mib]`
  the scores and the curve's circuits at MIB's nine budgets under mib/ (edges/mib.py).
The method's `score(pairs=None)` scores the run's prompts, or (bootstrap) the resampled `pairs` it is given.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from circuitlab.checks import refuse_sweep_keys
from circuitlab.config import plain
from circuitlab.edges import circuits, mib
from circuitlab.edges import selection as rules  # (run_edges' `selection` argument is a description)
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import check_additive
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError
from circuitlab.memory import release_freed
from circuitlab.metrics import usable_gap
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")


MAX_CURVE = 100  # percentages on MIB's faithfulness curve (MIB uses 10): two masked circuits each
MAX_BOOTSTRAP = 1000  # resamples: each scores every edge on every prompt once


def whole_number(value, field: str, allowed: str, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` when it is an int (not a bool) in minimum..maximum, else one line naming the field and what is allowed."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        raise ConfigError(field, value, allowed)
    return value


def _number(value, field: str, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(float(value)):
        raise ConfigError(field, value, allowed)
    return float(value)


def validate(cfg: DictConfig) -> None:
    m = cfg.method
    if m.counterfactual not in cf.COUNTERFACTUALS:
        raise ConfigError("method.counterfactual", m.counterfactual, cf.COUNTERFACTUALS)
    if m.select not in circuits.SELECTIONS:
        raise ConfigError("method.select", m.select, circuits.SELECTIONS)
    whole_number(m.n_edges, "method.n_edges", "a whole number of edges >= 0", minimum=0)
    _number(m.threshold, "method.threshold", "a number")
    if not isinstance(m.absolute, bool):
        raise ConfigError("method.absolute", m.absolute, "true or false")
    curve = plain(m.curve)
    if curve is None or not isinstance(curve, list) or len(curve) > MAX_CURVE:
        raise ConfigError("method.curve", curve if curve is None or len(curve) <= 12 else f"[{len(curve)} percentages]",
                          f"a list of at most {MAX_CURVE} percentages of edges kept, each in (0, 100] (or [])")
    for percent in curve:
        value = _number(percent, "method.curve", "percentages of edges kept, each in (0, 100]")
        if not 0 < value <= 100:
            raise ConfigError("method.curve", percent, "percentages of edges kept, each in (0, 100]")
    if sorted(float(p) for p in curve) != [float(p) for p in curve] or len(set(curve)) != len(curve):
        raise ConfigError("method.curve", curve, "increasing percentages (e.g. [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100])")
    if m.batch_size is not None:
        whole_number(m.batch_size, "method.batch_size", "a number of prompts >= 1, or null for all")
    whole_number(m.bootstrap, "method.bootstrap", f"a number of resamples of the prompts from 0 (none) to {MAX_BOOTSTRAP}", 0, MAX_BOOTSTRAP)
    keep = _number(m.bootstrap_keep, "method.bootstrap_keep", "a share of the resamples in (0, 1]")
    if not 0 < keep <= 1:
        raise ConfigError("method.bootstrap_keep", m.bootstrap_keep, "a share of the resamples in (0, 1] (e.g. 0.5)")
    exports = plain(m.export)
    if not isinstance(exports, list) or any(e not in mib.EXPORTS for e in exports):
        raise ConfigError("method.export", exports, f"a list of formats from {list(mib.EXPORTS)}, or []")
    missing = [p for p in mib.MIB_BUDGETS if p not in [float(c) for c in curve]]
    if "mib" in exports and missing:
        raise ConfigError("method.curve", curve, f"MIB's budgets {[mib.percent_name(p) for p in mib.MIB_BUDGETS]} among its percentages "
                          "(method.export=[mib] writes the curve's circuits at them)")
    refuse_sweep_keys(cfg, "scores every edge of the model at every position")


def contrasts(cfg: DictConfig) -> bool:
    """The patching counterfactual is the corrupted prompt; mean and zero need none (`Method.contrasts`)."""
    return cfg.method.counterfactual == "patching"


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations):
    """The model's residual stream is a sum of its senders' outputs (from its config: before the weights load); the
    graph of the model; every named edge exists in it; the circuit size fits. No sweep points."""
    check_additive(shape, f"method={cfg.method.name}: model={cfg.model.name}")
    graph = EdgeGraph.of(shape)
    if cfg.method.n_edges > graph.n_edges:
        raise ConfigError("method.n_edges", cfg.method.n_edges, f"0..{graph.n_edges} (the model's edges)")
    if cfg.method.select == "milp" and graph.n_edges > rules.MAX_MILP_EDGES:
        raise ConfigError("method.select", "milp", f"topn, greedy or threshold for this model: milp solves graphs of at most "
                          f"{rules.MAX_MILP_EDGES:,} edges, this one has {graph.n_edges:,}")
    if cfg.method.bootstrap and pairs.n_pairs < 2:
        raise ConfigError("method.bootstrap", cfg.method.bootstrap, "0 with a single prompt pair (nothing to resample)")
    expected = plain(cfg.method.expected)
    if expected is not None:
        if not isinstance(expected, list) or not expected:
            raise ConfigError("method.expected", expected, "a non-empty list of edges, e.g. [input->m0, m0->a1.h0<v>], or null")
        for name in expected:
            graph.parse_edge(name, "method.expected")
    if not pairs.same_length and cfg.method.counterfactual == "mean":
        log.info("prompts of different lengths: the mean counterfactual averages each position over the prompts that have it and padding")
    return [], graph


def expected_mask(graph: EdgeGraph, names: list[str] | None) -> torch.Tensor | None:
    if names is None:
        return None
    mask = torch.zeros_like(graph.real)
    for name in names:
        mask[graph.parse_edge(name, "method.expected")] = True
    return mask


def run_edges(cfg: DictConfig, plan: Plan, model, score: Callable[..., tuple[torch.Tensor, dict]],
              selected: list[tuple[int, int]] | None = None, selection: str | None = None) -> MethodOutput:
    """`score()` -> ((sender, receiver) scores, extra manifest entries); the rest is the same for every method.
    With `method.bootstrap` the method's `score(pairs)` also scores resampled prompts (the extra entries of those
    calls are dropped). `selected`: the edges the method scores when not every edge of the model (results.csv and
    edges.csv list only them), `selection` what chose them (e.g. `method.sample=2000`). A circuit and the
    faithfulness curve are cut only when every edge has a score; the baselines (the full and the empty circuit)
    are always measured."""
    check_additive(model.cfg)
    graph: EdgeGraph = plan.method_plan
    m = cfg.method
    scores, extra = score()  # (what loading the model freed went back to the system in run.py, for every method)
    release_freed()  # the scoring's, before the masked forwards allocate theirs
    unscored = int(torch.isnan(scores[graph.real]).sum())
    keep, resampled, frequency = torch.zeros_like(graph.real), None, None
    if unscored == 0 and m.bootstrap:
        if "pairs" not in inspect.signature(score).parameters:
            raise ConfigError("method.bootstrap", m.bootstrap, f"0 for method={m.name} (it cannot score a resample of the prompts)")
        resampled = _bootstrap(score, plan.pairs, m.bootstrap, cfg.seed, cfg.progress)
        release_freed()
        frequency = rules.frequency(graph, resampled, lambda s: chosen_circuit(graph, s, m))
        keep = circuits.prune(graph, (frequency >= float(m.bootstrap_keep)) & graph.real)
        extra["bootstrap"] = {"resamples": m.bootstrap, "keep": float(m.bootstrap_keep), "edges_kept": int(keep.sum()),
                              "edges_ever_selected": int((frequency > 0).sum())}
        log.info("bootstrap: %d edges selected in some resample, %d in at least %.0f%% of the %d (the circuit, pruned)",
                 int((frequency > 0).sum()), int(keep.sum()), 100 * float(m.bootstrap_keep), m.bootstrap)
    elif unscored == 0:
        keep = chosen_circuit(graph, scores, m)
    rows, edges_table = edge_rows(cfg, graph, scores, keep, selected, frequency)
    tables, json_files, tensor_files = {"edges.csv": edges_table}, {}, {}
    if unscored == 0:
        faithfulness, found, curve = evaluate(cfg, plan, model, graph, scores, keep, resampled)
        tables["faithfulness.csv"] = faithfulness
        extra.update(found)
        json_files["circuit.json"] = circuits.graph_json(graph, scores, keep)
        if "mib" in plain(m.export):
            tensor_files.update(mib_export(cfg, graph, scores, keep, curve))
        expected = expected_mask(graph, plain(m.expected))
        if expected is not None:
            extra["auroc"] = circuits.auroc(scores, expected, graph.real)
            log.info("AUROC of |score| against the %d expected edges: %.3f", int(expected.sum()), extra["auroc"])
    else:
        log.info(unscored_message(cfg, graph.n_edges, graph.n_edges - unscored, len(selected) if selected is not None else None, selection))
        extra.update(full_and_empty(cfg, plan, model, graph))
    baselines = ({"logit_diff": extra["full_logit_diff"]}, {"logit_diff": extra["empty_logit_diff"]})
    extra.update(n_edges_in_graph=graph.n_edges, edges_scored=graph.n_edges - unscored, counterfactual=m.counterfactual)
    return MethodOutput(rows, {"scores": scores, "edge_exists": graph.real}, *baselines, tables=tables, extra=extra, json_files=json_files,
                        tensor_files=tensor_files)


def _bootstrap(score: Callable[..., tuple[torch.Tensor, dict]], pairs: PromptPairs, resamples: int, seed: int, progress: bool) -> torch.Tensor:
    return rules.bootstrap_scores(lambda sample: score(pairs=sample)[0], pairs, resamples, seed, progress)


def chosen_circuit(graph: EdgeGraph, scores: torch.Tensor, m) -> torch.Tensor:
    """The run's circuit from `scores` by `method.select` (n_edges counted after pruning)."""
    if m.select == "milp":
        return rules.milp_circuit(graph, scores, m.n_edges, m.absolute)
    return circuits.select(graph, scores, m.select, m.n_edges, float(m.threshold), m.absolute, kept=True)


def curve_circuit(graph: EdgeGraph, scores: torch.Tensor, m, n: int, absolute: bool, stable: tuple | None = None) -> torch.Tensor:
    """The curve's circuit of (at most) n edges: the most stable n with a bootstrap (`stable`: the ranking's
    `selection.stable_positions`), the best connected n with milp, greedy's n, else the top n (each then pruned,
    as MIB counts them)."""
    if stable is not None:
        return rules.stable_top(graph, stable, n)
    if m.select == "milp":
        return rules.milp_circuit(graph, scores, n, absolute)
    return circuits.select(graph, scores, "greedy" if m.select == "greedy" else "topn", n, 0.0, absolute)


def mib_export(cfg: DictConfig, graph: EdgeGraph, scores: torch.Tensor, keep: torch.Tensor, curve: dict) -> dict[str, dict]:
    """mib/'s files: the scores and the curve's circuits at MIB's budgets, of the ranking `method.absolute` picks."""
    ranking = "absolute" if cfg.method.absolute else "signed"
    folder = mib.folder_name(cfg.task.name, cfg.model.name, cfg.model.get("path"))
    if not mib.known_to_mib(cfg.task.name, cfg.model.name):
        log.info("mib/: folder %s (MIB's leaderboard scores only its own tasks and models)", folder)
    return mib.export_files(folder, graph, scores, keep, {p: curve[(ranking, p)] for p in mib.MIB_BUDGETS})


def unscored_message(cfg: DictConfig, n_edges: int, scored: int, n_selected: int | None, selection: str | None) -> str:
    """Why some edges have no score, in numbers: the ones selected, and of them the other shards'."""
    shards = cfg.sweep.num_shards
    parts = [f"{scored} of the model's {n_edges} edges scored"]
    if n_selected is not None and n_selected < n_edges:
        parts.append(f"{n_selected} selected by {selection}")
    if shards > 1 and scored < (n_selected if n_selected is not None else n_edges):
        parts.append(f"the others of them are other shards' (shard {cfg.sweep.shard} of {shards}; `circuitlab merge` puts them together)")
    return "; ".join(parts) + ": no circuit or faithfulness curve (they need every edge's score)"


def full_and_empty(cfg: DictConfig, plan: Plan, model, graph: EdgeGraph) -> dict:
    """The baselines without a circuit: the logit difference with every edge (the clean run) and with none (every
    edge carrying its counterfactual value), from one masked forward of the two."""
    from circuitlab.edges.masked import circuits_logit_diff

    sources = cf.prepare(model, plan.pairs, graph, cfg.method.counterfactual, cfg.method.batch_size or plan.pairs.n_pairs)
    everything = torch.stack([torch.zeros_like(graph.real), graph.real])
    (empty, full), forwards = circuits_logit_diff(model, plan.pairs, graph, sources, everything, cfg.memory_budget_mb, cfg.progress)
    log.info("baselines: every edge %.3f, none (all %s) %.3f", float(full), cfg.method.counterfactual, float(empty))
    return {"full_logit_diff": float(full), "empty_logit_diff": float(empty), "masked_forwards": forwards}


def edge_rows(cfg: DictConfig, graph: EdgeGraph, scores: torch.Tensor, keep: torch.Tensor, selected: list[tuple[int, int]] | None = None,
              frequency: torch.Tensor | None = None):
    """results.csv's rows (one per edge, or per `selected` edge) and edges.csv (ranked by |score|, unscored edges last;
    with a bootstrap, each edge's `frequency` in the resamples' circuits)."""
    import pandas as pd

    edges = graph.edges if selected is None else sorted(selected, key=lambda edge: (edge[1], edge[0]))  # the graph's order
    senders, receivers = (torch.tensor(index) for index in zip(*edges))
    values = scores[senders, receivers]
    order = torch.argsort(torch.nan_to_num(values.abs(), nan=-1.0), descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(1, len(order) + 1)
    kept = keep[senders, receivers]
    common = {"experiment": cfg.name, "method": cfg.method.name, "stream": "edge", "heads": "", "group": "", "position": "all",
              "position_label": "all", "metric": "score"}
    rows, table = [], []
    for i, (s, r) in enumerate(edges):
        value = float(values[i])
        rows.append({**common, "layer": graph.receiver_layer(r), "head": graph.receiver_kind(r)[1], "sender": graph.senders[s],
                     "receiver": graph.receivers[r], "value": value})
        table.append({"sender": graph.senders[s], "receiver": graph.receivers[r], "edge": graph.edge_name(s, r), "score": value,
                      "rank": int(rank[i]), "in_circuit": bool(kept[i]), **({} if frequency is None else {"frequency": float(frequency[s, r])})})
    return rows, pd.DataFrame(table).sort_values(["rank"], kind="stable")


def evaluate(cfg: DictConfig, plan: Plan, model, graph: EdgeGraph, scores: torch.Tensor, keep: torch.Tensor, resampled: torch.Tensor | None = None):
    """faithfulness.csv (the chosen circuit, then MIB's curve for signed and absolute rankings), the manifest's
    CPR, CMD, circuit and baselines, from masked forwards of every circuit plus the empty and full ones, and the
    curve's circuits by (ranking, percent)."""
    import pandas as pd

    from circuitlab.edges.masked import circuits_logit_diff

    m = cfg.method
    curve = [float(p) for p in plain(m.curve)]
    labels, masks = [("circuit", float("nan"))], [keep]
    for ranking, absolute in (("signed", False), ("absolute", True)):
        stable = None if resampled is None or not curve else rules.stable_positions(graph, scores, resampled, absolute)
        for percent in curve:
            labels.append((ranking, percent))
            masks.append(curve_circuit(graph, scores, m, circuits.edges_for_percent(graph, percent), absolute, stable))
    sources = cf.prepare(model, plan.pairs, graph, m.counterfactual, m.batch_size or plan.pairs.n_pairs)
    everything = torch.stack([torch.zeros_like(graph.real), graph.real, *masks])
    log.info("evaluating %d circuits with masked forwards: the empty and full ones, the chosen circuit%s", len(everything),
             f", MIB's faithfulness curve ({len(curve)} percentages x signed / absolute ranking)" if curve else "")
    values, forwards = circuits_logit_diff(model, plan.pairs, graph, sources, everything, cfg.memory_budget_mb, cfg.progress)
    empty, full = float(values[0]), float(values[1])
    gap = usable_gap(full, empty)  # NaN when full - empty is noise (metrics.degenerate_gap): so is every faithfulness
    faithful = lambda v: (v - empty) / gap  # noqa: E731
    table = pd.DataFrame([
        {"ranking": ranking, "percent": percent,
         "edges_requested": int(mask.sum()) if ranking == "circuit" else circuits.edges_for_percent(graph, percent),
         "edges_kept": int(mask.sum()), "logit_diff": value, "faithfulness": faithful(value)}
        for (ranking, percent), mask, value in zip(labels, masks, values[2:].tolist())])
    cpr, cmd = circuits.curve_areas(curve, table)
    circuit_f = float(table["faithfulness"].iloc[0])
    shown = lambda v: "n/a" if math.isnan(v) else f"{v:.3f}"  # noqa: E731
    rule = m.select + (f", edges in >= {float(m.bootstrap_keep):g} of {m.bootstrap} resamples' circuits" if m.bootstrap else "")
    log.info("circuit: %d edges (%s), faithfulness %s | CPR %s | CMD %s | %d masked forwards", int(keep.sum()), rule,
             shown(circuit_f), shown(cpr), shown(cmd), forwards)
    number = lambda v: None if math.isnan(v) else v  # noqa: E731  null in the manifest, not NaN (the reason: baseline_gap)
    found = {"cpr": number(cpr), "cmd": number(cmd), "masked_forwards": forwards, "full_logit_diff": full, "empty_logit_diff": empty,
             "circuit": {"select": m.select, "n_edges": m.n_edges if m.select != "threshold" else None,
                         "threshold": float(m.threshold) if m.select == "threshold" else None, "absolute": m.absolute,
                         "edges_kept": int(keep.sum()), "faithfulness": number(circuit_f)}}
    return table, found, dict(zip(labels[1:], masks[1:]))
