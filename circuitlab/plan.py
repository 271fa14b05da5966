"""Everything decided before the weights are loaded: the config checked, the prompts built, the sweep points
and (per method) receivers or training pairs planned. Bad input fails here, in one line, before any model loads."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from circuitlab import circuits
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import Location, check_present, enumerate_locations, get_stream, position_mask, resolve_layers, resolve_positions
from circuitlab.config import plain
from circuitlab.engine import sweep
from circuitlab.engine.records import Plan
from circuitlab.methods import ablation, attention, das, path_patching
from circuitlab.metrics import METRICS
from circuitlab.models import loading
from circuitlab.tasks import TASKS
from circuitlab.tasks.base import PromptPairs, single_token_id

METHODS = ("activation_patching", "attribution_patching", "path_patching", "das", "direct_attribution", "ablation")
ANALYSES = ("logit_lens", "layers", "heads")
PATTERN_PROMPTS = ("corrupted", "clean")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")



def check_schema(cfg: DictConfig, path: str = "") -> None:
    """Every key of a node typed by a schema (config.py) is one of its fields. Hydra stores a key added with `+`
    (`+task.n_promts=8`) even in a typed node, where nothing would read it: refused, naming the allowed keys."""
    schema = OmegaConf.get_type(cfg)
    if not dataclasses.is_dataclass(schema):
        return
    fields = [f.name for f in dataclasses.fields(schema)]
    for key in cfg.keys():
        where = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(where, plain(cfg._get_node(key)._value()), f"the keys of {path or 'the top level'}: {', '.join(fields)}",
                              hint=f"{schema.__name__} has no such key; a typo?")
        node = cfg._get_node(key)
        if OmegaConf.is_dict(node):
            check_schema(node, where)


def require_number(field: str, value, *, integer: bool = False, minimum: float | None = None, above: float | None = None,
                   maximum: float | None = None) -> None:
    """`value` is a finite number (an integer when `integer`) with minimum <= value, above < value, value <= maximum."""
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above) and (maximum is None or value <= maximum)
    if not ok:
        if integer and minimum == 1 and maximum is None:
            allowed = "a positive integer"
        else:
            bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
                      f"<= {maximum:g}" if maximum is not None else ""]
            allowed = " ".join(["an integer" if integer else "a finite number", *[b for b in bounds if b]])
        raise ConfigError(field, value, allowed)


def require_list(field: str, value, example: str) -> None:
    """A list setting that must name at least one thing (null and [] are refused)."""
    if value is None or (isinstance(value, (list, tuple)) and not value) or (OmegaConf.is_list(value) and not len(value)):
        raise ConfigError(field, "null" if value is None else "[]", f"one or more values, e.g. {example}")


def check_device(device: str) -> None:
    """The device exists on this machine: CUDA (and the index) or MPS."""
    if not DEVICE_PATTERN.match(str(device)):
        raise ConfigError("device", device, "auto, cpu, cuda, cuda:N, mps")
    if str(device).startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError("device", device, "auto, cpu (no CUDA device is visible)")
        count = torch.cuda.device_count()
        if ":" in str(device) and int(str(device).split(":")[1]) >= count:
            raise ConfigError("device", device, f"auto, cpu, cuda, cuda:0..{count - 1} ({count} CUDA device{'s' * (count > 1)} visible)")
    if device == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device", device, "auto, cpu (MPS, Apple's GPU backend, is not available on this machine)")


def check_values(cfg: DictConfig) -> None:
    """Numbers that must be finite and in range, lists that must not be empty or null."""
    if cfg.get("memory_budget_mb") is not None:
        value = cfg.memory_budget_mb
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("memory_budget_mb", value, "null (1024 MiB on CPU, half the free memory on CUDA) or a positive integer (MiB)")
    if "n_prompts" in cfg.task:
        require_number("task.n_prompts", cfg.task.n_prompts, integer=True, minimum=1)
    for key in ("layers", "positions"):
        if key in cfg.sweep and cfg.sweep[key] is None:
            raise ConfigError(f"sweep.{key}", "null", "all, or a list of layers" if key == "layers" else "every, or a list of positions")
    check_head_groups(plain(cfg.sweep.get("heads")))
    method = cfg.method
    if method.name == "das":
        require_number("method.low_rank_dimension", method.low_rank_dimension, integer=True, minimum=1)
        require_number("method.batch_size", method.batch_size, integer=True, minimum=1)
        require_number("method.epochs", method.epochs, integer=True, minimum=1)
        require_number("method.lr", method.lr, above=0)
        require_number("method.lr_end_factor", method.lr_end_factor, minimum=0, maximum=1)
        require_number("method.lr_decay_steps", method.lr_decay_steps, integer=True, minimum=0)
        require_number("method.boundary_lr", method.boundary_lr, above=0)
        require_number("method.boundary_penalty", method.boundary_penalty, minimum=0)
        require_number("method.temperature_start", method.temperature_start, above=0)
        require_number("method.temperature_end", method.temperature_end, above=0)
    if method.name == "path_patching":
        require_number("method.begin_layer", method.begin_layer, integer=True, minimum=0)
        for threshold in method.thresholds:
            require_number("method.thresholds", threshold, minimum=0)
    if method.name == "direct_attribution":
        require_list("method.analyses", method.analyses, "[logit_lens, layers, heads]")


def check_head_groups(spec) -> None:
    """`sweep.heads=[[]]` (or `[]`) would patch no head at all while the row reads as a head group."""
    if isinstance(spec, list):
        if not spec:
            raise ConfigError("sweep.heads", "[]", "null (the whole stream), each, all, leave_one_out, cumulative, a list of heads, "
                              "or a list of non-empty lists of heads")
        for item in spec:
            if isinstance(item, list) and not item:
                raise ConfigError("sweep.heads", plain(spec), "head groups of one or more heads, e.g. [[0, 3]] (an empty group patches nothing)")


def validate_static(cfg: DictConfig) -> None:
    """Every check that needs neither the tokenizer nor the weights."""
    check_schema(cfg)
    check_device(cfg.device)
    check_values(cfg)
    loading.validate_model_config(cfg.model)
    if cfg.task.name not in TASKS:
        raise ConfigError("task.name", cfg.task.name, TASKS)
    TASKS[cfg.task.name].validate_config(cfg.task)
    if cfg.method.name not in METHODS:
        raise ConfigError("method.name", cfg.method.name, METHODS)
    if "direction" in cfg.method and cfg.method.direction not in sweep.DIRECTIONS:
        raise ConfigError("method.direction", cfg.method.direction, sweep.DIRECTIONS)
    if cfg.method.name == "das":
        if cfg.method.intervention not in das.INTERVENTIONS:
            raise ConfigError("method.intervention", cfg.method.intervention, das.INTERVENTIONS)
        if cfg.task.name != "ioi_counterfactual":
            raise ConfigError("task", cfg.task.name, "ioi_counterfactual (method=das needs base / source pairs with counterfactual labels)")
        if cfg.method.load and not Path(cfg.method.load).expanduser().exists():
            raise ConfigError("method.load", cfg.method.load, "an existing run dir or interventions.pt")
    if cfg.method.name == "ablation":
        if cfg.method.mode not in ablation.MODES:
            raise ConfigError("method.mode", cfg.method.mode, ablation.MODES)
        ablation.check_scales(plain(cfg.method.scales))
        ablation.check_pca(cfg.method.mode, cfg.method.k, [], {})
        if cfg.method.resample_from not in ablation.RESAMPLE_FROM:
            raise ConfigError("method.resample_from", cfg.method.resample_from, ablation.RESAMPLE_FROM)
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
    check_shard(cfg)
    check_cumulative_order(cfg)
    if not cfg.sweep.streams:
        raise ConfigError("sweep.streams", "[]", "one or more stream names")
    for stream in cfg.sweep.streams:
        get_stream(stream)


RANKS_CUMULATIVE_HEADS = ("activation_patching", "attribution_patching")  # rank heads by their own patching effect


def check_cumulative_order(cfg: DictConfig) -> None:
    """`sweep.heads=cumulative` without `head_order` needs a method that ranks heads itself."""
    if cfg.sweep.get("heads") == "cumulative" and not cfg.sweep.get("head_order") and cfg.method.name not in RANKS_CUMULATIVE_HEADS:
        raise ConfigError("sweep.head_order", "null", f"a list of heads for sweep.heads=cumulative with method={cfg.method.name}, "
                          f"which does not rank heads itself (only {', '.join(RANKS_CUMULATIVE_HEADS)} do)")


UNSHARDABLE = ("das", "direct_attribution")


def check_shard(cfg: DictConfig) -> None:
    """0 <= shard < num_shards, and a method whose points are computed independently."""
    n, i = cfg.sweep.get("num_shards", 1), cfg.sweep.get("shard", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("sweep.num_shards", n, "a positive integer")
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
        raise ConfigError("sweep.shard", i, f"0..{n - 1} (sweep.num_shards={n})")
    if n > 1 and cfg.method.name in UNSHARDABLE:
        raise ConfigError("sweep.num_shards", n, f"1 for method={cfg.method.name} (sharding splits activation, attribution and "
                          "path patching and ablation sweeps)")
    if n > 1 and cfg.sweep.heads == "cumulative" and not cfg.sweep.get("head_order"):
        raise ConfigError("sweep.num_shards", n, "1 for sweep.heads=cumulative ranked by the heads' own effects (give sweep.head_order to shard it)")


def check_shard_count(cfg: DictConfig, locations: list[Location], pairs: PromptPairs) -> None:
    """Shards take whole chunks of the unsharded plan (`chunks.py`): shard i computes chunks i, i + n, ... Every
    chunk holds at least one point that patches something, so with more shards than such points some shard is
    sure to own no chunk: refused. (How many chunks the points make depends on the memory budget and the loaded
    model; that a shard got none is only known after its sweep.)"""
    n = cfg.sweep.get("num_shards", 1)
    if n <= 1:
        return
    if cfg.method.name == "attribution_patching" and not cfg.method.get("compare_exact", True):
        raise ConfigError("sweep.num_shards", n, "1 for method=attribution_patching with compare_exact=false (the estimates take one "
                          "pass over every point; only the exact patching beside them is split into chunks)")
    points, what = len(locations), "points"
    if cfg.method.name in ("activation_patching", "attribution_patching"):
        points, what = _patching_points(locations, pairs), "points that patch a position where clean and corrupted prompts differ"
    if cfg.method.name == "ablation":
        points, what = len(locations) * len(cfg.method.scales), "points x scales"
    if n > points:
        raise ConfigError("sweep.num_shards", n, f"{'1' if points <= 1 else f'1..{points}'} (the sweep has {points} {what}; a shard beyond that computes nothing)")


def _patching_points(locations: list[Location], pairs: PromptPairs) -> int:
    """The points activation patching computes: those that patch a cell at or after the first position where a clean
    prompt differs from its corrupted twin (earlier cells hold the same activations in both runs)."""
    start = sweep.first_difference(pairs)
    specs = list(dict.fromkeys(loc.positions for loc in locations))
    masks = position_mask(specs, pairs.width, pairs.named_positions, pairs.n_pairs)[:, :, start:]
    changes = dict(zip(specs, masks.flatten(1).any(1).tolist()))
    return sum(changes[loc.positions] for loc in locations)


def special_ids(tokenizer) -> tuple[int, int]:
    """(BOS, pad) ids the tasks build prompts with: BOS, else EOS; pad, else BOS. One rule for every split."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return bos, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos


def build_pairs(cfg: DictConfig, tokenizer) -> PromptPairs:
    return TASKS[cfg.task.name].build_pairs(cfg.task, tokenizer, *special_ids(tokenizer), cfg.seed)


def plan_locations(cfg: DictConfig, shape: loading.ModelShape, pairs: PromptPairs) -> list[Location]:
    if pairs.width > shape.n_ctx:
        raise CircuitlabError(f"task: prompts of {pairs.width} tokens exceed the model's context of {shape.n_ctx}")
    check_present(list(cfg.sweep.streams), shape)
    layers = resolve_layers(plain(cfg.sweep.layers), shape.n_layers)
    if not layers:
        raise ConfigError("sweep.layers", "[]", f"all, or one or more of the layers 0..{shape.n_layers - 1}")
    positions = resolve_positions(plain(cfg.sweep.positions), pairs.width, list(pairs.named_positions), pairs.same_length)
    if not positions:
        raise ConfigError("sweep.positions", "[]", f"every, all, one or more of {', '.join(pairs.named_positions)} or position indices")
    heads, order = plain(cfg.sweep.heads), plain(cfg.sweep.get("head_order"))
    return enumerate_locations(list(cfg.sweep.streams), layers, positions, heads, order, shape)


def prepare(cfg: DictConfig) -> Plan:
    """Validate the whole config and build the prompts and sweep points, without loading the weights."""
    validate_static(cfg)
    shape = loading.model_shape(cfg.model)
    tokenizer = loading.load_tokenizer(cfg.model)
    pairs = build_pairs(cfg, tokenizer)
    check_token_ids(cfg, tokenizer, pairs)
    locations, method_plan = plan_locations(cfg, shape, pairs), None
    if cfg.method.name == "path_patching":
        method_plan = receivers = plan_receivers(cfg, shape, pairs)
        locations = path_patching.check_senders(locations, list(receivers), cfg.method.begin_layer)
        attention.resolve_heads(plain(cfg.method.pattern_heads), shape.n_layers, shape.n_heads)
    if cfg.method.name == "ablation":
        plan_ablation(cfg, shape, locations)
        if cfg.method.resample_from == "dataset":
            ablation.resampled_from_dataset(pairs, cfg.seed)  # its checks, before the weights load
    check_shard_count(cfg, locations, pairs)
    if "output_change" in cfg.method.get("metrics", []) and pairs.labels_differ is None:
        raise ConfigError("method.metrics", "output_change", "other metrics for this task (output_change needs labels for the corrupted "
                          "prompts: task=repeat_first, or task=pairs with 'corrupted_answer' on every line)")
    if cfg.method.name == "das":
        das.check_locations(locations, das.training_from(cfg.method), shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp)
        method_plan = train_pairs = TASKS[cfg.task.name].build_split(cfg.task, tokenizer, *special_ids(tokenizer), cfg.seed, "train")
        if cfg.method.load:  # the saved interventions are read and checked now, not after the weights load
            training = das.training_from(cfg.method)
            widths = [das.location_width(loc, shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp) for loc in locations]
            das.load_interventions(cfg.method.load, locations, training, widths)
        raw = [loc.positions for loc in locations if not isinstance(loc.positions, str)]
        if raw and not (train_pairs.same_length and pairs.same_length and train_pairs.width == pairs.width):
            raise ConfigError("sweep.positions", raw[0], "named positions (IO, S1, S2, END): train and test prompts differ in length, "
                              "so a raw index means different tokens")
    return Plan(shape, pairs, locations, tracked_tokens(cfg, tokenizer, pairs), tokenizer, method_plan)


def check_token_ids(cfg: DictConfig, tokenizer, pairs: PromptPairs) -> None:
    """Prompts written as token ids (checkpoints without a tokenizer) must stay inside the model's vocabulary."""
    from circuitlab.models import interpbench

    if not isinstance(tokenizer, interpbench.IdTokenizer):
        return
    d_vocab = interpbench.read_config(loading.checkpoint_dir(cfg.model), bool(cfg.model.get("allow_pickle", False)))["d_vocab"]
    for name in ("clean_tokens", "corrupted_tokens", "answer_tokens", "wrong_tokens", "corrupted_answer_tokens"):
        tokens = getattr(pairs, name)
        if tokens is not None and tokens.numel() and int(tokens.max()) >= d_vocab:
            raise ConfigError("task", f"token id {int(tokens.max())}", f"ids 0..{d_vocab - 1} (the model's d_vocab is {d_vocab})",
                              hint=f"in the {name.removesuffix('_tokens').replace('_', ' ')} prompts or labels")


def plan_ablation(cfg: DictConfig, shape: loading.ModelShape, locations: list[Location]) -> None:
    """The circuit's nodes exist; k is no wider than any swept stream (checked again on the loaded model)."""
    circuits.parse_circuit(plain(cfg.method.circuit), shape.n_layers, shape.n_heads)
    by_stream = {"q": shape.d_head, "k": shape.d_head, "v": shape.d_head, "z": shape.d_head, "mlp_post": shape.d_mlp}
    widths = {loc.stream: by_stream.get(get_stream(loc.stream).name, shape.d_model) for loc in locations}
    ablation.check_pca(cfg.method.mode, cfg.method.k, locations, widths)


def plan_receivers(cfg: DictConfig, shape: loading.ModelShape, pairs: PromptPairs) -> tuple[path_patching.Receiver, ...]:
    """Path patching's receivers and receiver positions, checked against the model and the prompts."""
    if not cfg.method.receivers:
        raise ConfigError("method.receivers", "[]", path_patching.RECEIVER_SYNTAX)
    spec = plain(cfg.method.receiver_positions)
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
