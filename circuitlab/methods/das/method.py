"""Interchange interventions, DAS and Boundless DAS, trained on the task's train split and scored by IIA."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
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
from circuitlab.methods.das import controls as ctl
from circuitlab.methods.das import export
from circuitlab.methods.das.hypotheses import hypothesis_table
from circuitlab.methods.das.mask import swapped
from circuitlab.tasks import TASKS
from circuitlab.tasks.bos import special_ids

log = logging.getLogger("circuitlab")


def validate(cfg: DictConfig) -> None:
    method = cfg.method
    require_number("method.low_rank_dimension", method.low_rank_dimension, integer=True, minimum=1)
    require_number("method.batch_size", method.batch_size, integer=True, minimum=1)
    require_number("method.epochs", method.epochs, integer=True, minimum=1, maximum=1000)  # pyvene's notebooks: 5 to 50
    require_number("method.lr", method.lr, above=0)
    require_number("method.lr_end_factor", method.lr_end_factor, minimum=0, maximum=1)
    require_number("method.lr_decay_steps", method.lr_decay_steps, integer=True, minimum=0)
    require_number("method.boundary_lr", method.boundary_lr, above=0)
    require_number("method.boundary_penalty", method.boundary_penalty, minimum=0)
    require_number("method.temperature_start", method.temperature_start, above=0)
    require_number("method.temperature_end", method.temperature_end, above=0)
    if cfg.method.intervention not in das.INTERVENTIONS:
        raise ConfigError("method.intervention", cfg.method.intervention, das.INTERVENTIONS)
    if cfg.method.featurizer not in das.FEATURIZERS:
        raise ConfigError("method.featurizer", cfg.method.featurizer, das.FEATURIZERS)
    if cfg.method.featurizer == "mask" and cfg.method.intervention != "das":
        raise ConfigError("method.featurizer", "mask", f"rotation with method.intervention={cfg.method.intervention} (a mask replaces "
                          "DAS's rotation: method.intervention=das)")
    if not hasattr(TASKS[cfg.task.name], "build_split"):
        with_splits = [name for name, task in TASKS.items() if hasattr(task, "build_split")]
        raise ConfigError("task", cfg.task.name, f"{', '.join(with_splits)} (method=das needs base / source pairs with counterfactual "
                          "labels, in train and test splits)")
    if cfg.method.load and not Path(cfg.method.load).expanduser().exists():
        raise ConfigError("method.load", cfg.method.load, "an existing run dir or interventions.pt")
    validate_variants(cfg)
    for name in cfg.method.get("export") or []:
        if name not in export.FORMATS:
            raise ConfigError("method.export", name, export.FORMATS)
        if cfg.method.intervention == "vanilla":
            raise ConfigError("method.export", name, "[] with method.intervention=vanilla (it learns nothing to export)")


def validate_variants(cfg: DictConfig) -> None:
    """`method.controls` and `method.hypotheses`: known names, once each, a trained intervention, and nothing that
    trains beside `method.load` (saved interventions hold the real fit only)."""
    method = cfg.method
    controls, hypotheses = list(method.get("controls") or []), list(method.get("hypotheses") or [])
    for key, given, allowed in (("method.controls", controls, ctl.CONTROLS),
                                ("method.hypotheses", hypotheses, list(getattr(TASKS[cfg.task.name], "HYPOTHESES", {})))):
        if not given:
            continue
        if key == "method.hypotheses" and not allowed:
            with_hypotheses = [name for name, task in TASKS.items() if getattr(task, "HYPOTHESES", None)]
            raise ConfigError("method.hypotheses", given, f"[] (task {cfg.task.name} defines no hypotheses; "
                              f"{', '.join(with_hypotheses)} does)")
        for name in given:
            if name not in allowed:
                raise ConfigError(key, name, allowed)
        if len(set(given)) < len(given):
            raise ConfigError(key, given, "each name once")
        if method.intervention == "vanilla":
            raise ConfigError(key, given, "[] with method.intervention=vanilla (nothing is trained; use das or boundless)")
    if len(hypotheses) == 1:
        raise ConfigError("method.hypotheses", hypotheses, f"two or more of {', '.join(getattr(TASKS[cfg.task.name], 'HYPOTHESES', {}))} "
                          "(compared with each other), or []")
    trained = [c for c in controls if c in ctl.TRAINED_CONTROLS] + hypotheses
    if method.load and trained:
        raise ConfigError("method.controls" if trained[0] in controls else "method.hypotheses", trained[0],
                          "random_subspace only with method.load (the saved interventions hold the real fit; controls and "
                          "hypotheses that train need a run without load)")


@dataclass(frozen=True)
class DASPlan:
    """DAS's part of the Plan: the train split, and each hypothesis' labels (train, test) for the same pairs."""

    train: PromptPairs
    hypotheses: dict = field(default_factory=dict)


def keeps_chunks(cfg: DictConfig) -> bool:
    """Vanilla interchange is activation patching's sweep (finished chunks kept, an interrupted run resumes); trained
    interventions keep nothing until the run ends."""
    return cfg.method.intervention == "vanilla"


def plan(cfg: DictConfig, shape, pairs: PromptPairs, tokenizer, locations: list[Location]):
    """Subspaces that fit their locations, the train split (the Plan's method part), saved interventions that fit."""
    das.check_locations(locations, das.training_from(cfg.method), shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp)
    task, ids = TASKS[cfg.task.name], special_ids(tokenizer, cfg.model.get("bos", "tokenizer"))
    train_pairs = task.build_split(cfg.task, tokenizer, *ids, cfg.seed, "train")
    hypotheses = list(cfg.method.get("hypotheses") or [])
    labels = {}
    if hypotheses:
        train_labels, test_labels = (task.hypothesis_labels(cfg.task, tokenizer, *ids, cfg.seed, split, hypotheses + [task.BASE_ANSWER])
                                     for split in ("train", "test"))
        labels = {name: (train_labels[name], test_labels[name]) for name in hypotheses}
        check_hypotheses(cfg, test_labels, task.BASE_ANSWER)
    if cfg.method.load:  # the saved interventions are read and checked now, not after the weights load
        training = das.training_from(cfg.method)
        widths = [das.location_width(loc, shape.n_heads, shape.d_head, shape.d_model, shape.d_mlp) for loc in locations]
        das.load_interventions(cfg.method.load, locations, training, widths)
    raw = [loc.positions for loc in locations if not isinstance(loc.positions, str)]
    if raw and not (train_pairs.same_length and pairs.same_length and train_pairs.width == pairs.width):
        raise ConfigError("sweep.positions", raw[0], "named positions (IO, S1, S2, END): train and test prompts differ in length, "
                          "so a raw index means different tokens")
    return locations, DASPlan(train_pairs, labels)


def check_hypotheses(cfg: DictConfig, test_labels: dict, base_answer: str) -> None:
    """Hypotheses that cannot be told apart on these test pairs are refused: one whose label is the base's own answer
    on every pair (an intervention that changes nothing scores it), two with the same label on every pair; a
    hypothesis that agrees with the base's answer on some pairs is said in a warning."""
    names = list(cfg.method.hypotheses)
    how = f"task.variable={cfg.task.variable}" + (f" task.source_names={cfg.task.get('source_names')}" if cfg.task.variable == "position" else "")
    for i, name in enumerate(names):
        trivial = float((test_labels[name] == test_labels[base_answer]).float().mean())
        if trivial == 1:
            raise ConfigError("method.hypotheses", name, f"hypotheses whose label is not the base's own answer on every test pair "
                              f"(with {how}; task.variable=name, or position with task.source_names=new, gives pairs where they differ)")
        if trivial > 0:
            log.warning("hypothesis %s: its label is the base's own answer on %.0f%% of the test pairs (an intervention that "
                        "changes nothing scores them)", name, 100 * trivial)
        for other in names[:i]:
            if torch.equal(test_labels[name], test_labels[other]):
                raise ConfigError("method.hypotheses", f"[{other}, {name}]", f"hypotheses that differ on the test pairs (with {how} both "
                                  "give the same label on every pair; task.variable=name, or position with task.source_names=new, "
                                  "tells them apart)")


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    """Train (or load) an intervention per location; IIA on the test split, the training loss, the learned
    parameters in interventions.pt (reloaded by `method.load`)."""
    hp = cfg.method
    training = das.training_from(hp)
    saved = das.load_interventions(hp.load, plan.locations, training) if hp.load else None
    train, test = plan.method_plan.train, plan.pairs
    controls = list(hp.get("controls") or [])
    fits = [das.Fit("shuffled_labels", *(ctl.shuffled(p.answer_tokens, training.seed + i, torch.stack([p.answer_tokens, p.wrong_tokens], 1))
                                          for i, p in enumerate((train, test))))] if "shuffled_labels" in controls else []
    same = [name for name, (tr, te) in plan.method_plan.hypotheses.items() if torch.equal(tr, train.answer_tokens) and torch.equal(te, test.answer_tokens)]
    fits += [das.Fit(ctl.HYPOTHESIS + name, *labels) for name, labels in plan.method_plan.hypotheses.items() if name not in same]
    result = das.das_sweep(model, train, test, plan.locations, training, cfg.progress, saved, cfg.memory_budget_mb, fits,
                           "random_subspace" in controls)
    for name in same:  # the task's own labels: the real fit is that hypothesis' fit
        result.variants[ctl.HYPOTHESIS + name] = result
    if "random_model" in controls:
        log.info("%s: the random_model control: the same training on a re-initialised copy of the model", hp.intervention)
        result.variants["random_model"] = das.das_sweep(ctl.random_model(model, training.seed), train, test, plan.locations, training,
                                                        cfg.progress, None, cfg.memory_budget_mb)
    fitted = [("", result)] + [(name, result.variants[name]) for name in controls]
    fitted += [(ctl.HYPOTHESIS + name, result.variants[ctl.HYPOTHESIS + name]) for name in plan.method_plan.hypotheses]
    rows = []
    for name, fit in fitted:
        column = {} if not name else {"hypothesis": name.removeprefix(ctl.HYPOTHESIS)} if name.startswith(ctl.HYPOTHESIS) else {"control": name}
        for i, loc in enumerate(plan.locations):
            values = {"iia": float(fit.iia[i]), "loss": float(fit.loss[i])}
            if "boundary" in fit.states[i]:
                values["boundary"] = float(fit.states[i]["boundary"])
            if hp.featurizer == "mask":
                values["mask_dims"] = float(len(swapped(fit.states[i]["basis"])))
            rows += [{**location_columns(cfg, loc, test), **column, "metric": k, "value": v} for k, v in values.items()]
        log.info("IIA%s: %s", f" ({name})" if name else "",
                 ", ".join(f"{loc.stream} L{loc.layer} {position_label(loc.positions, test.first_prompt_tokens)}"
                           f"{'' if loc.heads is None else ' h' + heads_value(loc.heads)} {v:.2f}" for loc, v in zip(plan.locations, fit.iia.tolist())))
    tensors = {"iia": result.iia, "loss": result.loss, "locations": [das.location_key(loc) for loc in plan.locations]}
    tensors.update({f"iia_{name.replace(':', '_')}": fit.iia for name, fit in fitted[1:]})
    extra = {"intervention": hp.intervention, "n_train_pairs": train.n_pairs}
    files = {} if hp.intervention == "vanilla" else {"interventions.pt": das.interventions_file(plan.locations, result, training)}
    weights = das.head_weights_frame(plan.locations, result, model.cfg.n_heads, model.cfg.d_head)
    tables = {"rotation_weights.csv": weights} if len(weights) else {}
    text_files, json_files = {}, {}
    meta = {"model": model.cfg.model_name, "task": cfg.task.name, "variable": cfg.task.get("variable")}
    if "mib" in (hp.get("export") or []):
        model_class = getattr(model.cfg, "original_architecture", None) or model.cfg.model_name
        mib, text_files, manifest = export.mib_files(plan.locations, tensors["locations"], result.states, hp.intervention, hp.low_rank_dimension,
                                                     cfg.task.name, cfg.task.get("variable"), model_class, hp.featurizer)
        files.update(mib)
        json_files[f"{export.MIB_DIR}/{export.MIB_MANIFEST}"] = manifest
    if "pyvene" in (hp.get("export") or []):
        files[export.PYVENE_FILE] = export.pyvene_file(plan.locations, tensors["locations"], result.states, hp.intervention,
                                                       hp.low_rank_dimension, meta, hp.featurizer)
    if plan.method_plan.hypotheses:
        import pandas as pd

        tables["hypotheses.csv"] = hypothesis_table(pd.DataFrame(rows), list(plan.method_plan.hypotheses))
    return MethodOutput(rows, tensors, {}, {}, tables, extra, files, json_files, text_files)
