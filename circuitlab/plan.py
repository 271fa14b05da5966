"""Everything decided before the weights are loaded: the config checked, the prompts built, the sweep points
and (per method) receivers or training pairs planned. Bad input fails here, in one line, before any model loads."""

from __future__ import annotations

import re
from pathlib import Path
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig, OmegaConf

from circuitlab import circuits
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import Location, check_present, enumerate_locations, get_stream, resolve_layers, resolve_positions
from circuitlab.methods import ablation, activation_patching, attention, das, path_patching
from circuitlab.metrics import METRICS
from circuitlab.models import loading
from circuitlab.tasks import TASKS
from circuitlab.tasks.base import PromptPairs, single_token_id

METHODS = ("activation_patching", "attribution_patching", "path_patching", "das", "direct_attribution", "ablation")
ANALYSES = ("logit_lens", "layers", "heads")
PATTERN_PROMPTS = ("corrupted", "clean")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")



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
    if not cfg.sweep.streams:
        raise ConfigError("sweep.streams", "[]", "one or more stream names")
    for stream in cfg.sweep.streams:
        get_stream(stream)


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


def check_shard_count(locations: list[Location], num_shards: int) -> None:
    """Shards take whole chunks of the sweep (see `chunks.py`); more shards than points is a mistake."""
    if num_shards > len(locations):
        raise ConfigError("sweep.num_shards", num_shards, f"1..{len(locations)} (the sweep has {len(locations)} points)")


def build_pairs(cfg: DictConfig, tokenizer) -> PromptPairs:
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else bos
    return TASKS[cfg.task.name].build_pairs(cfg.task, tokenizer, bos, pad, cfg.seed)


def plan_locations(cfg: DictConfig, shape: loading.ModelShape, pairs: PromptPairs) -> list[Location]:
    if pairs.width > shape.n_ctx:
        raise CircuitlabError(f"task: prompts of {pairs.width} tokens exceed the model's context of {shape.n_ctx}")
    check_present(list(cfg.sweep.streams), shape)
    layers = resolve_layers(_plain(cfg.sweep.layers), shape.n_layers)
    positions = resolve_positions(_plain(cfg.sweep.positions), pairs.width, list(pairs.named_positions), pairs.same_length)
    heads, order = _plain(cfg.sweep.heads), _plain(cfg.sweep.get("head_order"))
    return enumerate_locations(list(cfg.sweep.streams), layers, positions, heads, order, shape)


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
    if cfg.method.name == "ablation":
        plan_ablation(cfg, shape, locations)
        if cfg.method.resample_from == "dataset":
            ablation.resampled_from_dataset(pairs, cfg.seed)  # its checks, before the weights load
    check_shard_count(locations, cfg.sweep.get("num_shards", 1))
    if "output_change" in cfg.method.get("metrics", []) and pairs.labels_differ is None:
        raise ConfigError("method.metrics", "output_change", "other metrics for this task (output_change needs labels for the corrupted "
                          "prompts: task=repeat_first, or task=pairs with 'corrupted_answer' on every line)")
    train_pairs = None
    if cfg.method.name == "das":
        das.check_locations(locations, das.training_from(cfg.method), shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        train_pairs = TASKS[cfg.task.name].build_split(cfg.task, tokenizer, bos, tokenizer.pad_token_id or bos, cfg.seed, "train")
        raw = [loc.positions for loc in locations if not isinstance(loc.positions, str)]
        if raw and not (train_pairs.same_length and pairs.same_length and train_pairs.width == pairs.width):
            raise ConfigError("sweep.positions", raw[0], "named positions (IO, S1, S2, END): train and test prompts differ in length, "
                              "so a raw index means different tokens")
    return Plan(shape, pairs, locations, tracked_tokens(cfg, tokenizer, pairs), tokenizer, receivers, train_pairs)


def plan_ablation(cfg: DictConfig, shape: loading.ModelShape, locations: list[Location]) -> None:
    """The circuit's nodes exist; k is no wider than any swept stream (checked again on the loaded model)."""
    circuits.parse_circuit(_plain(cfg.method.circuit), shape.n_layers, shape.n_heads)
    by_stream = {"q": shape.d_head, "k": shape.d_head, "v": shape.d_head, "z": shape.d_head, "mlp_post": shape.d_mlp}
    widths = {loc.stream: by_stream.get(get_stream(loc.stream).name, shape.d_model) for loc in locations}
    ablation.check_pca(cfg.method.mode, cfg.method.k, locations, widths)


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
