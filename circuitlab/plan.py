"""Everything decided before the weights are loaded: the config checked, the prompts built, the sweep points
and (per method) receivers or training pairs planned. Bad input fails here, in one line, before any model loads."""

from __future__ import annotations

import dataclasses
import json
import re

from omegaconf import DictConfig, OmegaConf

from circuitlab import threads
from circuitlab.checks import require_number
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import Location, check_present, enumerate_locations, get_stream, resolve_layers, resolve_positions
from circuitlab.config import plain
from circuitlab.engine.records import Plan
from circuitlab.methods import registry
from circuitlab.metrics import METRICS
from circuitlab.models import loading
from circuitlab.tasks import TASKS
from circuitlab.tasks.base import PromptPairs, single_token_id
from circuitlab.tasks.bos import bos_prefix, bos_record, special_ids  # noqa: F401  (bos_prefix, bos_record re-exported)

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


def check_device(device: str) -> None:
    """The device exists on this machine: CUDA (and the index) or MPS."""
    import torch

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
    """Numbers that must be finite and in range, lists that must not be empty or null (a method checks its own settings
    in its `validate`)."""
    if cfg.get("memory_budget_mb") is not None:
        value = cfg.memory_budget_mb
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError("memory_budget_mb", value, "null (1024 MiB on CPU, half the free memory on CUDA) or a positive integer (MiB)")
    threads.check(cfg.get("threads"))
    check_name(cfg.get("name"))
    for key in ("n_prompts", "n_train"):
        if key in cfg.task:
            require_number(f"task.{key}", cfg.task[key], integer=True, minimum=1, maximum=MAX_PROMPTS)
    for key in ("layers", "positions"):
        if key in cfg.sweep and cfg.sweep[key] is None:
            raise ConfigError(f"sweep.{key}", "null", "all, or a list of layers" if key == "layers" else "every, or a list of positions")
    check_head_groups(plain(cfg.sweep.get("heads")))


MAX_PROMPTS = 1_000_000  # prompt pairs a task builds (all of them are tokenised before any model loads)
NAME_MAX = 255  # bytes in one file name (Linux, macOS)


def check_name(name) -> None:
    """`name` is one directory name under results_dir (the run dirs and multirun dirs are made there): not empty,
    not `.` or `..`, without a path separator, at most NAME_MAX bytes; anything else would write elsewhere."""
    text = "" if name is None else str(name)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0") or len(text.encode("utf-8", "surrogateescape")) > NAME_MAX:
        shown = text if len(text) <= 60 else f"{text[:40]}...({len(text)} characters)"
        raise ConfigError("name", repr(shown) if not text.strip() else shown,
                          f"one directory name under results_dir: not . or .., no / or \\, at most {NAME_MAX} bytes")


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
    registry.get(cfg.method.name).hooks.validate(cfg)
    for metric in cfg.method.get("metrics", []):
        if metric not in METRICS:
            raise ConfigError("method.metrics", metric, METRICS)
    if "prob" in cfg.method.get("metrics", []) and not cfg.task.get("track") and not getattr(TASKS[cfg.task.name], "TRACKS_OWN_TOKENS", False):
        raise ConfigError("task.track", "[]", "one or more tokens, e.g. task.track=[' Mary'], for method.metrics=[prob]")
    check_shard(cfg)
    check_cumulative_order(cfg)
    if not cfg.sweep.streams:
        raise ConfigError("sweep.streams", "[]", "one or more stream names")
    for stream in cfg.sweep.streams:
        get_stream(stream)


def check_cumulative_order(cfg: DictConfig) -> None:
    """`sweep.heads=cumulative` without `head_order` needs a method that ranks heads itself."""
    if cfg.sweep.get("heads") == "cumulative" and not cfg.sweep.get("head_order") and not registry.get(cfg.method.name).ranks_cumulative_heads:
        ranking = ", ".join(m.name for m in registry.METHODS.values() if m.ranks_cumulative_heads)
        raise ConfigError("sweep.head_order", "null", f"a list of heads for sweep.heads=cumulative with method={cfg.method.name}, "
                          f"which does not rank heads itself (only {ranking} do)")


def check_shard(cfg: DictConfig) -> None:
    """0 <= shard < num_shards, and a method whose points are computed independently."""
    n, i = cfg.sweep.get("num_shards", 1), cfg.sweep.get("shard", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError("sweep.num_shards", n, "a positive integer")
    if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n:
        raise ConfigError("sweep.shard", i, f"0..{n - 1} (sweep.num_shards={n})")
    if n > 1 and not registry.get(cfg.method.name).shardable:
        shardable = ", ".join(m.name for m in registry.METHODS.values() if m.shardable)
        raise ConfigError("sweep.num_shards", n, f"1 for method={cfg.method.name} (sharding splits the sweeps of {shardable})")
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
    hooks = registry.get(cfg.method.name).hooks
    points, what = hooks.shard_points(cfg, locations, pairs) if hasattr(hooks, "shard_points") else (len(locations), "points")
    if n > points:
        raise ConfigError("sweep.num_shards", n, f"{'1' if points <= 1 else f'1..{points}'} (the sweep has {points} {what}; a shard beyond that computes nothing)")


def build_pairs(cfg: DictConfig, tokenizer) -> PromptPairs:
    pairs = TASKS[cfg.task.name].build_pairs(cfg.task, tokenizer, *special_ids(tokenizer, cfg.model.get("bos", "tokenizer")), cfg.seed)
    check_answers_differ(cfg, pairs, tokenizer)
    return pairs


def check_answers_differ(cfg: DictConfig, pairs: PromptPairs, tokenizer) -> None:
    """A pair whose answer token is its wrong token has a logit difference of 0 by construction, whatever the model
    does: refused, naming the first such pair."""
    same = (pairs.answer_tokens == pairs.wrong_tokens).nonzero().flatten().tolist()
    if not same:
        return
    first, token = same[0], int(pairs.answer_tokens[same[0]])
    text = pairs.clean_texts[first] if first < len(pairs.clean_texts) else ""
    try:
        word = repr(tokenizer.decode([token]))
    except Exception:  # noqa: BLE001  an id tokenizer: the id
        word = f"id {token}"
    others = f" (and {len(same) - 1} more)" if len(same) > 1 else ""
    raise CircuitlabError(f"task={cfg.task.name}: pair {first + 1} of {pairs.n_pairs}{others} has the same answer and wrong answer "
                          f"({word}{': ' + repr(text[:80]) if text else ''}), so its logit difference is 0 whatever the model "
                          "does; give each pair a wrong answer other than its answer")


def check_contrast(cfg: DictConfig, pairs: PromptPairs) -> None:
    """Every clean prompt identical to its corrupted one leaves a method that compares them nothing to measure (the
    clean - corrupted gap is 0: `metrics.degenerate_gap`): refused before the weights load."""
    if bool((pairs.clean_tokens == pairs.corrupted_tokens).all()) and registry.get(cfg.method.name).contrasts(cfg):
        raise CircuitlabError(f"task={cfg.task.name}: every clean prompt is the same as its corrupted prompt ({pairs.n_pairs} pairs), so "
                              f"method={cfg.method.name} has nothing to compare (the clean - corrupted gap is 0 and a score "
                              "normalised by it is noise); give pairs whose prompts differ")


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


PREPARED: dict[str, Plan] = {}  # plans this process built, by the config they were built from
MAX_PREPARED = 64


def prepare_once(cfg: DictConfig) -> Plan:
    """`prepare`, once per config in a process: the plan the CLI's pre-flight check built is the one the run uses
    (keyed by the whole config but its run dir, which is timestamped, and by the digests of the files it reads, so
    any other value, an edited dataset or a changed checkpoint is checked and planned again; a multirun's jobs each
    keep theirs)."""
    from circuitlab import inputs
    from circuitlab.resume import resolved

    try:
        files = inputs.digests(cfg)
    except Exception:  # noqa: BLE001  a file that cannot be read: prepare says what is wrong, in one line
        return prepare(cfg)
    key = json.dumps([{k: v for k, v in resolved(cfg).items() if k != "run"}, files], sort_keys=True, default=str)
    if key not in PREPARED:
        if len(PREPARED) >= MAX_PREPARED:
            PREPARED.pop(next(iter(PREPARED)))
        PREPARED[key] = prepare(cfg)
    return PREPARED[key]


def prepare(cfg: DictConfig) -> Plan:
    """Validate the whole config and build the prompts and sweep points, without loading the weights."""
    validate_static(cfg)
    shape = loading.model_shape(cfg.model)
    tokenizer = loading.load_tokenizer(cfg.model)
    check_tokenizer_size(cfg, shape, tokenizer)
    pairs = build_pairs(cfg, tokenizer)
    check_token_ids(shape, pairs)
    check_contrast(cfg, pairs)
    locations, method_plan = registry.get(cfg.method.name).hooks.plan(cfg, shape, pairs, tokenizer, plan_locations(cfg, shape, pairs))
    check_shard_count(cfg, locations, pairs)
    if "output_change" in cfg.method.get("metrics", []) and pairs.labels_differ is None:
        raise ConfigError("method.metrics", "output_change", "other metrics for this task (output_change needs labels for the corrupted "
                          "prompts: task=repeat_first, or task=pairs with 'corrupted_answer' on every line)")
    return Plan(shape, pairs, locations, tracked_tokens(cfg, tokenizer, pairs), tokenizer, method_plan)


def check_tokenizer_size(cfg: DictConfig, shape: loading.ModelShape, tokenizer) -> None:
    """The tokenizer fits the model's embedding (`shape.d_vocab` rows): one with more tokens than that (ids past the
    embedding) or far fewer (below TOKENIZER_SHORTFALL of it: another model's) is refused, naming both sizes. An
    embedding a little wider than its tokenizer (padded to a multiple of 64 or 128, as Pythia's) is accepted."""
    size = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    if size is None or shape.d_vocab is None or size <= shape.d_vocab <= size / TOKENIZER_SHORTFALL:
        return
    source = f"model.path={cfg.model.path}" if cfg.model.get("path") else f"model={cfg.model.name}"
    raise CircuitlabError(f"{source}: its tokenizer has {size} tokens but the model's embedding has {shape.d_vocab} (d_vocab); they "
                          f"must belong to the same model (the tokenizer at most as large as the embedding, and at least "
                          f"{TOKENIZER_SHORTFALL:.0%} of it)")


def check_token_ids(shape: loading.ModelShape, pairs: PromptPairs) -> None:
    """Every token id of the prompts and labels is below the model's d_vocab (prompts written as ids, for
    checkpoints without a tokenizer, included)."""
    if shape.d_vocab is None:
        return
    d_vocab = shape.d_vocab
    for name in ("clean_tokens", "corrupted_tokens", "answer_tokens", "wrong_tokens", "corrupted_answer_tokens"):
        tokens = getattr(pairs, name)
        if tokens is not None and tokens.numel() and int(tokens.max()) >= d_vocab:
            raise ConfigError("task", f"token id {int(tokens.max())}", f"ids 0..{d_vocab - 1} (the model's d_vocab is {d_vocab})",
                              hint=f"in the {name.removesuffix('_tokens').replace('_', ' ')} prompts or labels")


TOKENIZER_SHORTFALL = 0.9  # a tokenizer below 90% of the embedding's rows is another model's (padding adds < 2%)


def tracked_tokens(cfg: DictConfig, tokenizer, pairs: PromptPairs) -> dict[str, int]:
    """`task.track` strings (and the task's own) -> token ids; each must be one token."""
    tracked = {}
    for text in dict.fromkeys([*(cfg.task.get("track") or []), *pairs.track]):
        token = single_token_id(tokenizer, text)
        if token is None:
            raise ConfigError("task.track", repr(text), "strings that are one token each for this model's tokenizer")
        tracked[text.strip() or text] = token
    return tracked
