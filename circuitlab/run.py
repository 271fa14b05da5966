"""run_experiment(cfg, run_dir): the whole experiment, Hydra-free (callable from a notebook or a test).

Order matters: every check that needs no model runs first, then the tokenizer and the prompts (so positions
are checked against real prompt lengths), and only then the model weights are loaded.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from circuitlab import results as rs
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import (
    Location,
    enumerate_locations,
    get_stream,
    heads_value,
    position_label,
    position_value,
    resolve_layers,
    resolve_positions,
)
from circuitlab.methods import ablation, activation_patching, attention, attribution_patching, das, direct_attribution, path_patching
from circuitlab.metrics import METRICS
from circuitlab.models import loading
from circuitlab.tasks import TASKS
from circuitlab.tasks.base import PromptPairs, single_token_id

log = logging.getLogger("circuitlab")
METHODS = ("activation_patching", "attribution_patching", "path_patching", "das", "direct_attribution", "ablation")
ANALYSES = ("logit_lens", "layers", "heads")
PATTERN_PROMPTS = ("corrupted", "clean")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class PhaseTimer:
    """Wall time per phase, for the manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] = round(time.perf_counter() - start, 3)


def validate_static(cfg: DictConfig) -> None:
    """Every check that needs neither the tokenizer nor the weights."""
    if not DEVICE_PATTERN.match(str(cfg.device)):
        raise ConfigError("device", cfg.device, "auto, cpu, cuda, cuda:N, mps")
    if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", cfg.device, "auto, cpu (no CUDA device is visible)")
    loading.validate_model_config(cfg.model)
    if cfg.task.name not in TASKS:
        raise ConfigError("task.name", cfg.task.name, TASKS)
    TASKS[cfg.task.name].validate_config(cfg.task)
    if cfg.method.name not in METHODS:
        raise ConfigError("method.name", cfg.method.name, METHODS)
    if "direction" in cfg.method and cfg.method.direction not in activation_patching.DIRECTIONS:
        raise ConfigError("method.direction", cfg.method.direction, activation_patching.DIRECTIONS)
    if cfg.method.name == "das":
        if cfg.method.intervention not in das.INTERVENTIONS:
            raise ConfigError("method.intervention", cfg.method.intervention, das.INTERVENTIONS)
        if cfg.task.name != "ioi_counterfactual":
            raise ConfigError("task", cfg.task.name, "ioi_counterfactual (method=das needs base / source pairs with counterfactual labels)")
        if cfg.method.low_rank_dimension < 1:
            raise ConfigError("method.low_rank_dimension", cfg.method.low_rank_dimension, "a positive integer")
        if cfg.method.load and not Path(cfg.method.load).exists():
            raise ConfigError("method.load", cfg.method.load, "an existing run dir or interventions.pt")
    if cfg.method.name == "ablation":
        if cfg.method.mode not in ablation.MODES:
            raise ConfigError("method.mode", cfg.method.mode, ablation.MODES)
        ablation.check_scales(_plain(cfg.method.scales))
    if cfg.method.name == "direct_attribution":
        for analysis in cfg.method.analyses:
            if analysis not in ANALYSES:
                raise ConfigError("method.analyses", analysis, ANALYSES)
        if cfg.method.prompts not in PATTERN_PROMPTS:
            raise ConfigError("method.prompts", cfg.method.prompts, PATTERN_PROMPTS)
    if cfg.method.name == "path_patching" and cfg.method.pattern_prompts not in PATTERN_PROMPTS:
        raise ConfigError("method.pattern_prompts", cfg.method.pattern_prompts, PATTERN_PROMPTS)
    for metric in cfg.method.get("metrics", []):
        if metric not in METRICS:
            raise ConfigError("method.metrics", metric, METRICS)
    if "prob" in cfg.method.get("metrics", []) and not cfg.task.get("track") and cfg.task.name != "pairs":
        raise ConfigError("task.track", "[]", "one or more tokens, e.g. task.track=[' Mary'], for method.metrics=[prob]")
    if not cfg.sweep.streams:
        raise ConfigError("sweep.streams", "[]", "one or more stream names")
    for stream in cfg.sweep.streams:
        get_stream(stream)


def build_pairs(cfg: DictConfig, tokenizer) -> PromptPairs:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    return TASKS[cfg.task.name].build_pairs(cfg.task, tokenizer, bos, pad, cfg.seed)


def plan_locations(cfg: DictConfig, shape: loading.ModelShape, pairs: PromptPairs) -> list[Location]:
    if pairs.width > shape.n_ctx:
        raise CircuitlabError(f"task: prompts of {pairs.width} tokens exceed the model's context of {shape.n_ctx}")
    layers = resolve_layers(_plain(cfg.sweep.layers), shape.n_layers)
    positions = resolve_positions(_plain(cfg.sweep.positions), pairs.width, list(pairs.named_positions), pairs.same_length)
    heads, order = _plain(cfg.sweep.heads), _plain(cfg.sweep.get("head_order"))
    return enumerate_locations(list(cfg.sweep.streams), layers, positions, heads, order, shape.n_heads)


def _plain(value):
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@dataclass(frozen=True)
class Plan:
    """Everything decided before the weights are loaded."""

    shape: loading.ModelShape
    pairs: PromptPairs
    locations: list[Location]
    tracked: dict[str, int]
    tokenizer: object = None
    receivers: tuple[path_patching.Receiver, ...] = field(default_factory=tuple)
    train_pairs: PromptPairs | None = None


def prepare(cfg: DictConfig) -> Plan:
    """Validate the whole config and build the prompts and sweep points, without loading the weights."""
    validate_static(cfg)
    shape = loading.model_shape(cfg.model)
    tokenizer = loading.load_tokenizer(cfg.model)
    pairs = build_pairs(cfg, tokenizer)
    locations, receivers = plan_locations(cfg, shape, pairs), ()
    if cfg.method.name == "path_patching":
        receivers = plan_receivers(cfg, shape, pairs)
        locations = path_patching.check_senders(locations, list(receivers), cfg.method.begin_layer)
        attention.resolve_heads(_plain(cfg.method.pattern_heads), shape.n_layers, shape.n_heads)
    train_pairs = None
    if cfg.method.name == "das":
        check_das_widths(cfg, shape, locations)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        train_pairs = TASKS[cfg.task.name].build_split(cfg.task, tokenizer, bos, tokenizer.pad_token_id or bos, cfg.seed, "train")
        raw = [loc.positions for loc in locations if not isinstance(loc.positions, str)]
        if raw and not (train_pairs.same_length and pairs.same_length and train_pairs.width == pairs.width):
            raise ConfigError("sweep.positions", raw[0], "named positions (IO, S1, S2, END): train and test prompts differ in length, "
                              "so a raw index means different tokens")
    return Plan(shape, pairs, locations, tracked_tokens(cfg, tokenizer, pairs), tokenizer, receivers, train_pairs)


def check_das_widths(cfg: DictConfig, shape: loading.ModelShape, locations: list[Location]) -> None:
    """A DAS subspace cannot be wider than its location (MLP widths are checked once the model is loaded)."""
    k = cfg.method.low_rank_dimension
    if cfg.method.intervention != "das":
        return
    for loc in locations:
        heads = get_stream(loc.stream).has_heads
        width = (len(loc.heads) if loc.heads else shape.n_heads) * (shape.d_model // shape.n_heads) if heads else shape.d_model
        if loc.stream != "mlp_post" and k > width:
            raise ConfigError("method.low_rank_dimension", k, f"1..{width} (the width of {loc.stream} at layer {loc.layer})")


def plan_receivers(cfg: DictConfig, shape: loading.ModelShape, pairs: PromptPairs) -> tuple[path_patching.Receiver, ...]:
    """Path patching's receivers and receiver positions, checked against the model and the prompts."""
    if not cfg.method.receivers:
        raise ConfigError("method.receivers", "[]", path_patching.RECEIVER_SYNTAX)
    spec = _plain(cfg.method.receiver_positions)
    spec = tuple(spec) if isinstance(spec, list) else spec
    resolve_positions([spec], pairs.width, list(pairs.named_positions), pairs.same_length, "method.receiver_positions")
    return tuple(path_patching.parse_receiver(r, shape.n_layers, shape.n_heads) for r in cfg.method.receivers)


def tracked_tokens(cfg: DictConfig, tokenizer, pairs: PromptPairs) -> dict[str, int]:
    """`task.track` strings (and the task's own) -> token ids; each must be one token."""
    tracked = {}
    for text in dict.fromkeys([*(cfg.task.get("track") or []), *pairs.track]):
        token = single_token_id(tokenizer, text)
        if token is None:
            raise ConfigError("task.track", repr(text), "strings that are one token each for this model's tokenizer")
        tracked[text.strip() or text] = token
    return tracked


def run_experiment(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment into `run_dir`; returns the manifest."""
    run_dir = Path(run_dir)
    timer = PhaseTimer()
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with timer("prepare"):
        plan = prepare(cfg)
    shape, pairs, locations = plan.shape, plan.pairs, plan.locations
    device = loading.resolve_device(cfg.device)
    if pairs.dropped:
        log.info("dropped prompt pairs: %s", ", ".join(f"{k}: {v}" for k, v in pairs.dropped.items()))
    log.info(
        "device %s | model %s (%d layers) | %d prompt pairs | %d sweep points",
        device, cfg.model.name, shape.n_layers, pairs.n_pairs, len(locations),
    )
    with timer("load_model"):
        model = loading.load_model(cfg.model, device=device)
    with timer("sweep"):
        output = RUNNERS[cfg.method.name](cfg, plan, model)
    with timer("write_results"):
        rs.write_csv(run_dir / "results.csv", rs.tidy_frame(output.rows))
        rs.write_tensors(run_dir / "results.pt", output.tensors)
        rs.write_tensors(run_dir / "dataset.pt", pairs.to_tensors())
        for name, frame in output.tables.items():
            rs.write_csv(run_dir / name, frame)
        for name, data in output.tensor_files.items():
            rs.write_tensors(run_dir / name, data)
    figures = []
    if cfg.figures:
        from circuitlab.figures import render_run

        with timer("figures"):
            figures = [str(p) for p in render_run(run_dir)]
    manifest = {
        "experiment": cfg.name,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": loading.describe(model),
        "device": device,
        "seed": cfg.seed,
        "n_prompt_pairs": pairs.n_pairs,
        "dropped_prompt_pairs": pairs.dropped,
        "n_sweep_points": len(locations),
        "baselines": {"clean": output.clean, "corrupted": output.corrupted},
        **output.extra,
        "versions": rs.package_versions(),
        "git_commit": rs.git_commit(Path(__file__).parent),
        "wall_time_seconds": timer.seconds,
        "files": ["results.csv", "results.pt", "dataset.pt", *output.tables, *output.tensor_files, *[str(Path(f).relative_to(run_dir)) for f in figures]],
    }
    rs.write_json(run_dir / "manifest.json", manifest)
    if "logit_diff" in output.clean and "logit_diff" in output.corrupted:
        log.info("clean logit diff %.3f | corrupted %.3f", output.clean["logit_diff"], output.corrupted["logit_diff"])
    log.info("results: %s", run_dir)
    if figures:
        log.info("figures: %s", ", ".join(figures))
    return manifest


@dataclass
class MethodOutput:
    """What a method hands back for writing: tidy rows, tensors, extra CSV tables by file name, the
    unpatched baselines and extra manifest entries."""

    rows: list[dict]
    tensors: dict
    clean: dict[str, float]
    corrupted: dict[str, float]
    tables: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    tensor_files: dict = field(default_factory=dict)


def _sweeper(cfg: DictConfig, plan: Plan, model):
    return lambda locs: activation_patching.patch_sweep(  # noqa: E731
        model, plan.pairs, locs, cfg.method.direction, cfg.memory_budget_mb, cfg.progress, tuple(cfg.method.metrics), plan.tracked,
    )


def _swept_locations(cfg: DictConfig, plan: Plan, sweep) -> list[Location]:
    if cfg.sweep.heads == "cumulative" and not cfg.sweep.get("head_order"):
        return ranked_cumulative(plan.locations, sweep, plan.shape.n_heads)
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
    spec = _plain(cfg.method.receiver_positions)
    result = path_patching.path_patch(
        model, plan.pairs, plan.locations, list(plan.receivers), tuple(spec) if isinstance(spec, list) else spec,
        cfg.memory_budget_mb, cfg.progress, tuple(cfg.method.metrics), plan.tracked,
    )
    variation = -result.normalized
    result.metrics["logit_diff_variation"] = variation
    receiver = " + ".join(r.label for r in plan.receivers)
    rows = [{**row, "receiver": receiver} for row in patching_rows(cfg, result, plan.pairs)]
    important = path_patching.important_senders(plan.locations, variation, list(cfg.method.thresholds))
    for line in path_patching.describe_important(important, list(cfg.method.thresholds)):
        log.info(line)
    heads = attention.resolve_heads(_plain(cfg.method.pattern_heads), plan.shape.n_layers, plan.shape.n_heads)
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
    return MethodOutput(rows, tensors, result.clean, result.corrupted, tables, {"receivers": [r.label for r in plan.receivers]})


def run_das(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Train (or load) an intervention per location; IIA on the test split, the training loss, the learned
    parameters in interventions.pt (reloaded by `method.load`)."""
    hp = cfg.method
    training = das.Training(**{f.name: hp[f.name] for f in dataclasses.fields(das.Training)})
    saved = das.load_interventions(hp.load, plan.locations, training) if hp.load else None
    result = das.das_sweep(model, plan.train_pairs, plan.pairs, plan.locations, training, cfg.progress, saved)
    rows = []
    for i, loc in enumerate(plan.locations):
        values = {"iia": float(result.iia[i]), "loss": float(result.loss[i])}
        if "boundary" in result.states[i]:
            values["boundary"] = float(result.states[i]["boundary"])
        rows += [{**location_columns(cfg, loc, plan.pairs), "metric": k, "value": v} for k, v in values.items()]
    log.info("IIA: %s", ", ".join(f"{loc.stream} L{loc.layer} {position_label(loc.positions, plan.pairs.first_prompt_tokens)}"
                                   f"{'' if loc.heads is None else ' h' + heads_value(loc.heads)} {v:.2f}" for loc, v in zip(plan.locations, result.iia.tolist())))
    tensors = {"iia": result.iia, "loss": result.loss, "locations": [das.location_key(loc) for loc in plan.locations]}
    extra = {"intervention": hp.intervention, "n_train_pairs": plan.train_pairs.n_pairs}
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
             "decomposition_error": result.decomposition_error}
    clean, corrupted = (measured, {}) if cfg.method.prompts == "clean" else ({}, measured)
    return MethodOutput(rows, {"lens": torch.tensor([v for _, _, v in result.lens])}, clean, corrupted, extra=extra)


def run_ablation(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """One ablation sweep per scale; `effect` = (clean - ablated) / (clean - corrupted) of the logit difference."""
    scales = ablation.check_scales(_plain(cfg.method.scales))
    results = ablation.ablate(model, plan.pairs, plan.locations, cfg.method.mode, scales, cfg.memory_budget_mb, cfg.progress,
                              tuple(cfg.method.metrics), plan.tracked)
    corrupted = ablation.corrupted_logit_diff(model, plan.pairs)
    rows = []
    for scale, result in results.items():
        clean = result.clean_logit_diff
        values = {**result.metrics, "effect": (clean - result.logit_diff) / (clean - corrupted)}
        for i, loc in enumerate(plan.locations):
            common = {**location_columns(cfg, loc, plan.pairs), "scale": scale}
            rows += [{**common, "metric": name, "value": float(v[i])} for name, v in values.items()]
    first = next(iter(results.values()))
    extra = {"mode": cfg.method.mode, "scales": scales}
    return MethodOutput(rows, {f"effect/scale={s}": (r.clean_logit_diff - r.logit_diff) / (r.clean_logit_diff - corrupted) for s, r in results.items()},
                        first.clean, {"logit_diff": corrupted}, extra=extra)


RUNNERS = {
    "activation_patching": run_activation_patching,
    "attribution_patching": run_attribution_patching,
    "path_patching": run_path_patching,
    "das": run_das,
    "direct_attribution": run_direct_attribution,
    "ablation": run_ablation,
}


def ranked_cumulative(locations: list[Location], sweep, n_heads: int) -> list[Location]:
    """Cumulative head groups in computed order: per (stream, layer, positions), heads ranked by the metric
    each one alone reaches (largest first)."""
    singles = list(dict.fromkeys(Location(l.stream, l.layer, l.positions, (h,), "", h) for l in locations for h in range(n_heads)))
    effect = dict(zip(singles, sweep(singles).logit_diff.tolist()))
    out = []
    for key in dict.fromkeys((l.stream, l.layer, l.positions) for l in locations):
        ranked = sorted(range(n_heads), key=lambda h: -effect[Location(*key, (h,), "", h)])
        out += [Location(*key, tuple(ranked[: i + 1]), "cumulative", h) for i, h in enumerate(ranked)]
    return out


def correlations(locations: list[Location], estimates, exact) -> dict[str, float]:
    """Pearson correlation of attribution and exact patching, per stream and over all locations."""
    out = {}
    for stream in dict.fromkeys(loc.stream for loc in locations):
        index = [i for i, loc in enumerate(locations) if loc.stream == stream]
        out[stream] = attribution_patching.pearson(estimates[index], exact[index])
    out["all"] = attribution_patching.pearson(estimates, exact)
    return out


def location_columns(cfg: DictConfig, location: Location, pairs: PromptPairs) -> dict:
    return {
        "experiment": cfg.name,
        "method": cfg.method.name,
        "stream": location.stream,
        "layer": location.layer,
        "head": location.head,
        "heads": heads_value(location.heads),
        "group": location.group,
        "position": position_value(location.positions),
        "position_label": position_label(location.positions, pairs.first_prompt_tokens),
    }


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


def patching_rows(cfg: DictConfig, result: activation_patching.PatchingResult, pairs: PromptPairs) -> list[dict]:
    values = {**result.metrics, "logit_diff_normalized": result.normalized}
    order = ["logit_diff", "logit_diff_normalized", *[m for m in result.metrics if m != "logit_diff"]]
    rows = []
    for i, location in enumerate(result.locations):
        common = location_columns(cfg, location, pairs)
        rows += [{**common, "metric": name, "value": float(values[name][i])} for name in order]
    return rows


def patching_tensors(result: activation_patching.PatchingResult, pairs: PromptPairs) -> dict:
    """`<stream>/<metric>`: Tensor[layer, head point, position] (no head axis for streams patched whole), in
    sweep order, plus the axes' labels and the baselines."""
    layers = sorted({loc.layer for loc in result.locations})
    positions = list(dict.fromkeys(loc.positions for loc in result.locations))
    out: dict[str, object] = {
        "layers": torch.tensor(layers),
        "position_labels": [position_label(p, pairs.first_prompt_tokens) for p in positions],
        "clean_logit_diff": torch.tensor(result.clean_logit_diff),
        "corrupted_logit_diff": torch.tensor(result.corrupted_logit_diff),
    }
    values = {**result.metrics, "logit_diff_normalized": result.normalized}
    for stream in dict.fromkeys(loc.stream for loc in result.locations):
        mine = [(i, loc) for i, loc in enumerate(result.locations) if loc.stream == stream]
        head_points = list(dict.fromkeys((loc.heads, loc.group, loc.head) for _, loc in mine))
        with_heads = head_points != [(None, "", None)]
        if with_heads:
            out[f"{stream}/head_points"] = [f"{group}:{head}:{heads_value(heads)}" for heads, group, head in head_points]
        for metric, tensor in values.items():
            grid = torch.full((len(layers), len(head_points), len(positions)), float("nan"))
            for i, loc in mine:
                grid[layers.index(loc.layer), head_points.index((loc.heads, loc.group, loc.head)), positions.index(loc.positions)] = float(tensor[i])
            out[f"{stream}/{metric}"] = grid if with_heads else grid[:, 0]
    return out
