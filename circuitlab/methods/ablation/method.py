"""Ablations with scales (seed 004): resample / mean / zero and PCA subspaces, circuits and their faithfulness."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.config import plain
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import location_columns
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.metrics import usable_gap
from circuitlab.tasks.base import PromptPairs
from dataclasses import replace

from circuitlab import circuits
from circuitlab.locations import get_stream
from circuitlab.methods.ablation import compute as ablation

log = logging.getLogger("circuitlab")


def validate(cfg: DictConfig) -> None:
    if cfg.method.mode not in ablation.MODES:
        raise ConfigError("method.mode", cfg.method.mode, ablation.MODES)
    ablation.check_scales(plain(cfg.method.scales))
    ablation.check_pca(cfg.method.mode, cfg.method.k, [], {})
    if cfg.method.resample_from not in ablation.RESAMPLE_FROM:
        raise ConfigError("method.resample_from", cfg.method.resample_from, ablation.RESAMPLE_FROM)


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """The circuit's nodes exist; k is no wider than any swept stream (checked again on the loaded model); resampling
    from the dataset is possible."""
    circuits.parse_circuit(plain(cfg.method.circuit), shape.n_layers, shape.n_heads)
    by_stream = {"q": shape.d_head, "k": shape.d_head, "v": shape.d_head, "z": shape.d_head, "mlp_post": shape.d_mlp}
    widths = {loc.stream: by_stream.get(get_stream(loc.stream).name, shape.d_model) for loc in locations}
    ablation.check_pca(cfg.method.mode, cfg.method.k, locations, widths)
    if cfg.method.resample_from == "dataset":
        ablation.resampled_from_dataset(pairs, cfg.seed)  # its checks, before the weights load
    return locations, None


def shard_points(cfg: DictConfig, locations: list[Location], pairs: PromptPairs) -> tuple[int, str]:
    return len(locations) * len(cfg.method.scales), "points x scales"


def sweep_calls(cfg: DictConfig, plan: Plan) -> list:
    """Its patching sweeps, for the cost estimate (cost.py): one per scale, of transformed sources (every position)."""
    return [(plan.locations, plan.pairs, True) for _ in ablation.check_scales(plain(cfg.method.scales))]


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """One ablation sweep per scale; `effect` = (clean - ablated) / (clean - corrupted) of the logit difference.
    With a declared circuit, rows say whether their node is in it, and `faithfulness.csv` gives the share of the
    clean logit difference kept when every swept location outside the circuit is ablated at once."""
    mode, scales, metrics = cfg.method.mode, ablation.check_scales(plain(cfg.method.scales)), tuple(cfg.method.metrics)
    circuit = circuits.parse_circuit(plain(cfg.method.circuit), model.cfg.n_layers, model.cfg.n_heads)
    paired = plan.pairs  # the effect's reference stays the paired corrupted run
    if cfg.method.get("resample_from", "corrupted") == "dataset" and mode not in ablation.SELF_SOURCED + ("zero",):
        plan = replace(plan, pairs=ablation.resampled_from_dataset(plan.pairs, cfg.seed))
    fitted = ablation.fit(model, plan.pairs, plan.locations, mode, cfg.method.k)
    results = ablation.ablate(model, plan.pairs, plan.locations, mode, scales, cfg.memory_budget_mb, cfg.progress, metrics,
                              plan.tracked, k=cfg.method.k, fitted=fitted)
    corrupted = ablation.reference_corrupted(model, paired, mode, results, resampled=plan.pairs is not paired)
    first = next(iter(results.values()))
    effects = {scale: (r.clean_logit_diff - r.logit_diff) / usable_gap(r.clean_logit_diff, corrupted) for scale, r in results.items()}
    marks = [circuits.in_circuit(loc, circuit, model.cfg.n_heads) for loc in plan.locations]
    rows = []
    for scale, result in results.items():
        values = {**result.metrics, "effect": effects[scale]}
        for i, loc in enumerate(plan.locations):
            common = {**location_columns(cfg, loc, plan.pairs), "scale": scale, "in_circuit": marks[i]}
            rows += [{**common, "metric": name, "value": float(v[i])} for name, v in values.items()]
    extra, tables = {"mode": mode, "scales": scales}, {}
    if mode in ablation.PCA_MODES:
        extra["k"] = cfg.method.k
    if circuit is not None:
        outside = [loc for loc, mark in zip(plan.locations, marks) if mark is False]
        table = faithfulness_table(model, plan, outside, mode, scales, fitted, first.clean_logit_diff, corrupted, metrics)
        tables["faithfulness.csv"] = table
        extra.update(circuit=sorted(circuit), faithfulness={float(r["scale"]): float(r["faithfulness"]) for _, r in table.iterrows()})
        for _, r in table.iterrows():
            log.info("faithfulness at scale %g (%d locations outside the circuit ablated): %.3f", r["scale"], r["n_ablated"], r["faithfulness"])
    return MethodOutput(rows, {f"effect/scale={s}": e for s, e in effects.items()}, first.clean, {"logit_diff": corrupted},
                        tables=tables, extra=extra)


def faithfulness_table(model, plan: Plan, outside: list[Location], mode: str, scales: list[float], fitted, clean_ld: float,
                       corrupted_ld: float, metrics: tuple[str, ...]):
    """Per scale: the logit difference with every location outside the circuit ablated together, and
    faithfulness = (that - corrupted) / (clean - corrupted) (1: the circuit alone keeps the clean behaviour)."""
    import pandas as pd

    from circuitlab.metrics import output_changed

    rows = []
    clean_logits = None
    for scale in scales:
        if outside:
            transform = ablation.make_transform(mode, scale, *fitted)
            logits = ablation.ablate_together(model, plan.pairs, outside, transform, mode in ablation.SELF_SOURCED)
            ld = ablation.mean_logit_diff(logits, plan.pairs)
        else:
            logits, ld = None, clean_ld
        row = {"scale": scale, "n_ablated": len(outside), "logit_diff": ld, "faithfulness": (ld - corrupted_ld) / usable_gap(clean_ld, corrupted_ld)}
        if "output_change" in metrics and logits is not None:
            clean_logits = clean_logits if clean_logits is not None else ablation.final_logits(model, plan.pairs.clean_tokens, plan.pairs)
            row["output_change"] = float(output_changed(logits, clean_logits, plan.pairs.labels_differ))
        rows.append(row)
    return pd.DataFrame(rows)
