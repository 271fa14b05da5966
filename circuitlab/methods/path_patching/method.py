"""Path patching (the IOI paper's algorithm; seed 003): each sender's effect through the receivers only."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.checks import require_number
from circuitlab.config import plain
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import patching_rows, patching_tensors
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.tasks.base import PromptPairs
from circuitlab.locations import resolve_positions
from circuitlab.methods.path_patching import attention
from circuitlab.methods.path_patching import compute as path_patching
from circuitlab.methods.path_patching.important import describe_important, important_senders, top_heads
from circuitlab.methods.path_patching.receivers import RECEIVER_SYNTAX, check_senders, parse_receiver

log = logging.getLogger("circuitlab")


PATTERN_PROMPTS = ("corrupted", "clean")


def validate(cfg: DictConfig) -> None:
    require_number("method.begin_layer", cfg.method.begin_layer, integer=True, minimum=0)
    for threshold in cfg.method.thresholds:
        require_number("method.thresholds", threshold, minimum=0)
    if cfg.method.pattern_prompts not in PATTERN_PROMPTS:
        raise ConfigError("method.pattern_prompts", cfg.method.pattern_prompts, PATTERN_PROMPTS)


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """The receivers and receiver positions, checked against the model and the prompts; the senders left before them."""
    if not cfg.method.receivers:
        raise ConfigError("method.receivers", "[]", RECEIVER_SYNTAX)
    spec = plain(cfg.method.receiver_positions)
    spec = tuple(spec) if isinstance(spec, list) else spec
    resolve_positions([spec], pairs.width, list(pairs.named_positions), pairs.same_length, "method.receiver_positions")
    receivers = tuple(parse_receiver(r, shape.n_layers, shape.n_heads) for r in cfg.method.receivers)
    locations = check_senders(locations, list(receivers), cfg.method.begin_layer)
    attention.resolve_heads(plain(cfg.method.pattern_heads), shape.n_layers, shape.n_heads)
    return locations, receivers


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
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
    important = important_senders(plan.locations, variation, list(cfg.method.thresholds))
    for line in describe_important(important, list(cfg.method.thresholds)):
        log.info(line)
    heads = attention.resolve_heads(plain(cfg.method.pattern_heads), plan.shape.n_layers, plan.shape.n_heads)
    if heads is None:
        heads = top_heads(plan.locations, variation, cfg.method.thresholds[0] if cfg.method.thresholds else 0.0)
    tables = {"important_heads.csv": important}
    tensors = patching_tensors(result, plan.pairs)
    if heads:
        tokens = plan.pairs.corrupted_tokens if cfg.method.pattern_prompts == "corrupted" else plan.pairs.clean_tokens
        patterns, n_prompts = attention.mean_patterns(model, tokens, plan.pairs.lengths, heads)
        labels = attention.shared_labels(tokens, plan.pairs.lengths, plan.pairs.named_positions, plan.tokenizer)
        tables["attention_patterns.csv"] = attention.patterns_frame(patterns, heads, labels, cfg.method.pattern_prompts, n_prompts)
        tensors.update(attention_patterns=patterns, attention_heads=[f"{l}.{h}" for l, h in heads])
    return MethodOutput(rows, tensors, result.clean, result.corrupted, tables, {"receivers": [r.label for r in plan.method_plan]})
