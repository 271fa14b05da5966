"""Interchange interventions, DAS and Boundless DAS, trained on the task's train split and scored by IIA."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from circuitlab.checks import require_number
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.engine.rows import location_columns
from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.tasks.base import PromptPairs
from pathlib import Path

from circuitlab.locations import heads_value, position_label
from circuitlab.methods.das import compute as das
from circuitlab.tasks import TASKS
from circuitlab.tasks.bos import special_ids

log = logging.getLogger("circuitlab")


def validate(cfg: DictConfig) -> None:
    method = cfg.method
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
    if cfg.method.intervention not in das.INTERVENTIONS:
        raise ConfigError("method.intervention", cfg.method.intervention, das.INTERVENTIONS)
    if not hasattr(TASKS[cfg.task.name], "build_split"):
        with_splits = [name for name, task in TASKS.items() if hasattr(task, "build_split")]
        raise ConfigError("task", cfg.task.name, f"{', '.join(with_splits)} (method=das needs base / source pairs with counterfactual "
                          "labels, in train and test splits)")
    if cfg.method.load and not Path(cfg.method.load).expanduser().exists():
        raise ConfigError("method.load", cfg.method.load, "an existing run dir or interventions.pt")


def keeps_chunks(cfg: DictConfig) -> bool:
    """Vanilla interchange is activation patching's sweep (finished chunks kept, an interrupted run resumes); trained
    interventions keep nothing until the run ends."""
    return cfg.method.intervention == "vanilla"


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """Subspaces that fit their locations, the train split (the Plan's method part), saved interventions that fit."""
    das.check_locations(locations, das.training_from(cfg.method), shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp)
    train_pairs = TASKS[cfg.task.name].build_split(cfg.task, tokenizer, *special_ids(tokenizer, cfg.model.get("bos", "tokenizer")), cfg.seed, "train")
    if cfg.method.load:  # the saved interventions are read and checked now, not after the weights load
        training = das.training_from(cfg.method)
        widths = [das.location_width(loc, shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp) for loc in locations]
        das.load_interventions(cfg.method.load, locations, training, widths)
    raw = [loc.positions for loc in locations if not isinstance(loc.positions, str)]
    if raw and not (train_pairs.same_length and pairs.same_length and train_pairs.width == pairs.width):
        raise ConfigError("sweep.positions", raw[0], "named positions (IO, S1, S2, END): train and test prompts differ in length, "
                          "so a raw index means different tokens")
    return locations, train_pairs


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Train (or load) an intervention per location; IIA on the test split, the training loss, the learned
    parameters in interventions.pt (reloaded by `method.load`)."""
    hp = cfg.method
    training = das.training_from(hp)
    saved = das.load_interventions(hp.load, plan.locations, training) if hp.load else None
    result = das.das_sweep(model, plan.method_plan, plan.pairs, plan.locations, training, cfg.progress, saved, cfg.memory_budget_mb)
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
