"""One runner per method: (cfg, plan, model) -> MethodOutput (tidy rows, tensors, extra tables, baselines)."""

from __future__ import annotations

import logging
from dataclasses import replace

import torch
from omegaconf import DictConfig

from circuitlab import circuits
from circuitlab.config import plain
from circuitlab.engine import sweep as engine
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import location_columns, patching_rows, patching_tensors, ranked_cumulative
from circuitlab.locations import Location, heads_value, position_label
from circuitlab.methods import ablation, attention, attribution_patching, das, direct_attribution, path_patching
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")


def _sweeper(cfg: DictConfig, plan: Plan, model):
    return lambda locs: engine.patch_sweep(  # noqa: E731
        model, plan.pairs, locs, cfg.method.direction, cfg.memory_budget_mb, cfg.progress, tuple(cfg.method.metrics), plan.tracked,
    )


def _swept_locations(cfg: DictConfig, plan: Plan, sweep) -> list[Location]:
    if cfg.sweep.heads == "cumulative" and not cfg.sweep.get("head_order"):
        return ranked_cumulative(plan.locations, sweep, plan.shape)
    return plan.locations


def run_activation_patching(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    sweep = _sweeper(cfg, plan, model)
    result = sweep(_swept_locations(cfg, plan, sweep))
    return MethodOutput(patching_rows(cfg, result, plan.pairs), patching_tensors(result, plan.pairs), result.clean, result.corrupted)


def run_attribution_patching(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Attribution estimates, with exact patching beside them when `compare_exact`."""
    sweep = _sweeper(cfg, plan, model)
    locations = _swept_locations(cfg, plan, sweep)
    estimates, clean_ld, corrupted_ld = attribution_patching.attribute(model, plan.pairs, locations, cfg.method.direction)
    exact = sweep(locations) if cfg.method.compare_exact else None
    rows = attribution_rows(cfg, locations, estimates, clean_ld - corrupted_ld, exact, plan.pairs)
    tensors = patching_tensors(exact, plan.pairs) if exact is not None else {}
    tensors["attribution"] = estimates
    extra = {"correlation_with_exact": correlations(locations, estimates, exact.logit_diff)} if exact is not None else {}
    clean, corrupted = (exact.clean, exact.corrupted) if exact is not None else ({"logit_diff": clean_ld}, {"logit_diff": corrupted_ld})
    return MethodOutput(rows, tensors, clean, corrupted, extra=extra)


def run_path_patching(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Every sender into the receivers; `logit_diff_variation` is the seed's (patched - corrupted) /
    (corrupted - clean); heads above the thresholds are listed; attention patterns of chosen heads."""
    spec = plain(cfg.method.receiver_positions)
    result = path_patching.path_patch(
        model, plan.pairs, plan.locations, list(plan.method_plan), tuple(spec) if isinstance(spec, list) else spec,
        cfg.memory_budget_mb, cfg.progress, tuple(cfg.method.metrics), plan.tracked,
    )
    variation = -result.normalized
    result.metrics["logit_diff_variation"] = variation
    receiver = " + ".join(r.label for r in plan.method_plan)
    rows = [{**row, "receiver": receiver} for row in patching_rows(cfg, result, plan.pairs)]
    important = path_patching.important_senders(plan.locations, variation, list(cfg.method.thresholds))
    for line in path_patching.describe_important(important, list(cfg.method.thresholds)):
        log.info(line)
    heads = attention.resolve_heads(plain(cfg.method.pattern_heads), plan.shape.n_layers, plan.shape.n_heads)
    if heads is None:
        heads = path_patching.top_heads(plan.locations, variation, cfg.method.thresholds[0] if cfg.method.thresholds else 0.0)
    tables = {"important_heads.csv": important}
    tensors = patching_tensors(result, plan.pairs)
    if heads:
        tokens = plan.pairs.corrupted_tokens if cfg.method.pattern_prompts == "corrupted" else plan.pairs.clean_tokens
        patterns, n_prompts = attention.mean_patterns(model, tokens, plan.pairs.lengths, heads)
        labels = plan.tokenizer.convert_ids_to_tokens(tokens[0, : patterns.shape[-1]].tolist())
        tables["attention_patterns.csv"] = attention.patterns_frame(patterns, heads, labels, cfg.method.pattern_prompts, n_prompts)
        tensors.update(attention_patterns=patterns, attention_heads=[f"{l}.{h}" for l, h in heads])
    return MethodOutput(rows, tensors, result.clean, result.corrupted, tables, {"receivers": [r.label for r in plan.method_plan]})


def run_das(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Train (or load) an intervention per location; IIA on the test split, the training loss, the learned
    parameters in interventions.pt (reloaded by `method.load`)."""
    hp = cfg.method
    training = das.training_from(hp)
    saved = das.load_interventions(hp.load, plan.locations, training) if hp.load else None
    result = das.das_sweep(model, plan.method_plan, plan.pairs, plan.locations, training, cfg.progress, saved)
    rows = []
    for i, loc in enumerate(plan.locations):
        values = {"iia": float(result.iia[i]), "loss": float(result.loss[i])}
        if "boundary" in result.states[i]:
            values["boundary"] = float(result.states[i]["boundary"])
        rows += [{**location_columns(cfg, loc, plan.pairs), "metric": k, "value": v} for k, v in values.items()]
    log.info("IIA: %s", ", ".join(f"{loc.stream} L{loc.layer} {position_label(loc.positions, plan.pairs.first_prompt_tokens)}"
                                   f"{'' if loc.heads is None else ' h' + heads_value(loc.heads)} {v:.2f}" for loc, v in zip(plan.locations, result.iia.tolist())))
    tensors = {"iia": result.iia, "loss": result.loss, "locations": [das.location_key(loc) for loc in plan.locations]}
    extra = {"intervention": hp.intervention, "n_train_pairs": plan.method_plan.n_pairs}
    files = {} if hp.intervention == "vanilla" else {"interventions.pt": das.interventions_file(plan.locations, result, training)}
    weights = das.head_weights_frame(plan.locations, result, model.cfg.n_heads, model.cfg.d_head)
    tables = {"rotation_weights.csv": weights} if len(weights) else {}
    return MethodOutput(rows, tensors, {}, {}, tables, extra, files)


def run_direct_attribution(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Logit lens, per-layer and per-head direct attribution at the final position; the manifest records how
    far the per-layer decomposition is from the measured logit difference (the seed's sanity check)."""
    result = direct_attribution.direct_attribution(model, plan.pairs, cfg.method.prompts, cfg.method.incl_mid)
    analyses = set(cfg.method.analyses)
    common = {"experiment": cfg.name, "method": cfg.method.name, "heads": "", "group": "", "position": "END", "position_label": "END", "receiver": ""}
    rows = []
    if "logit_lens" in analyses:
        rows += [{**common, "stream": s, "layer": l, "head": None, "metric": "logit_lens", "value": v} for s, l, v in result.lens]
    for name, layer, head, value in result.components:
        wanted = "layers" if name in direct_attribution.LAYER_COMPONENTS else "heads"
        if wanted in analyses:
            rows.append({**common, "stream": name, "layer": layer, "head": head, "heads": "" if head is None else str(head), "metric": "dla", "value": value})
    log.info("logit diff %.4f | per-layer decomposition + constant differs by %.2e", result.logit_diff, result.decomposition_error)
    measured = {"logit_diff": result.logit_diff}
    extra = {"prompts": cfg.method.prompts, "measured_logit_diff": result.logit_diff, "constant": result.constant,
             "uncapped_logit_diff": result.uncapped_logit_diff, "decomposition_error": result.decomposition_error}
    clean, corrupted = (measured, {}) if cfg.method.prompts == "clean" else ({}, measured)
    return MethodOutput(rows, {"lens": torch.tensor([v for _, _, v in result.lens])}, clean, corrupted, extra=extra)


def run_ablation(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
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
    effects = {scale: (r.clean_logit_diff - r.logit_diff) / (r.clean_logit_diff - corrupted) for scale, r in results.items()}
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
        row = {"scale": scale, "n_ablated": len(outside), "logit_diff": ld, "faithfulness": (ld - corrupted_ld) / (clean_ld - corrupted_ld)}
        if "output_change" in metrics and logits is not None:
            clean_logits = clean_logits if clean_logits is not None else ablation.final_logits(model, plan.pairs.clean_tokens, plan.pairs)
            row["output_change"] = float(output_changed(logits, clean_logits, plan.pairs.labels_differ))
        rows.append(row)
    return pd.DataFrame(rows)


RUNNERS = {
    "activation_patching": run_activation_patching,
    "attribution_patching": run_attribution_patching,
    "path_patching": run_path_patching,
    "das": run_das,
    "direct_attribution": run_direct_attribution,
    "ablation": run_ablation,
}


def correlations(locations: list[Location], estimates, exact) -> dict[str, float]:
    """Pearson correlation of attribution and exact patching, per stream and over all locations."""
    out = {}
    for stream in dict.fromkeys(loc.stream for loc in locations):
        index = [i for i, loc in enumerate(locations) if loc.stream == stream]
        out[stream] = attribution_patching.pearson(estimates[index], exact[index])
    out["all"] = attribution_patching.pearson(estimates, exact)
    return out


def attribution_rows(cfg, locations, estimates, clean_minus_corrupted: float, exact, pairs: PromptPairs) -> list[dict]:
    """`attribution` (estimated change of the logit difference) and its normalised form; with the exact
    run, `exact_change` (patched minus base logit difference) and `exact_normalized` beside them."""
    base = exact.corrupted_logit_diff if exact is not None and cfg.method.direction == "denoising" else None
    if exact is not None and base is None:
        base = exact.clean_logit_diff
    rows = []
    for i, location in enumerate(locations):
        common = location_columns(cfg, location, pairs)
        values = {"attribution": float(estimates[i]), "attribution_normalized": float(estimates[i]) / clean_minus_corrupted}
        if exact is not None:
            change = float(exact.logit_diff[i]) - base
            values.update(exact_change=change, exact_normalized=change / clean_minus_corrupted)
        rows += [{**common, "metric": name, "value": value} for name, value in values.items()]
    return rows


