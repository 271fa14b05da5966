"""Edge pruning: masks trained on every edge (train.py) whose keep probabilities are the edge scores; the circuit,
edges.csv, the faithfulness curve, CPR / CMD and AUROC come from circuitlab/edges/method.py's `run_edges`."""

from __future__ import annotations

import math

from omegaconf import DictConfig

from circuitlab.edges import method as edges
from circuitlab.engine import chunks
from circuitlab.engine.records import MethodOutput, Plan
from circuitlab.errors import ConfigError
from circuitlab.methods.edge_pruning.masks import SAMPLERS

plan, contrasts = edges.plan, edges.contrasts
LOSSES = ("kl", "logit_diff")
MAX_EPOCHS = 100_000


def _real(value, field: str, allowed: str, low: float, high: float, low_open: bool = False, high_open: bool = False) -> float:
    """`value` when it is a number in the interval, else one line naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigError(field, value, allowed)
    value = float(value)
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise ConfigError(field, value, allowed)
    return value


def validate(cfg: DictConfig) -> None:
    edges.validate(cfg)
    m = cfg.method
    if m.sampler not in SAMPLERS:
        raise ConfigError("method.sampler", m.sampler, SAMPLERS)
    if m.loss not in LOSSES:
        raise ConfigError("method.loss", m.loss, LOSSES)
    edges.whole_number(m.epochs, "method.epochs", f"a whole number of passes over the prompts from 1 to {MAX_EPOCHS}", maximum=MAX_EPOCHS)
    _real(m.lr, "method.lr", "a learning rate > 0 and <= 100 (edge pruning uses ~0.1 to 1)", 0, 100, low_open=True)
    _real(m.lambda_lr, "method.lambda_lr", "a learning rate >= 0 and <= 100 for the sparsity multipliers", 0, 100)
    _real(m.target_sparsity, "method.target_sparsity", "the share of edges to remove, >= 0 and < 1 (e.g. 0.98)", 0, 1, high_open=True)
    _real(m.sparsity_warmup, "method.sparsity_warmup", "the share of the steps over which the target is reached, 0 to 1", 0, 1)
    edges.whole_number(m.seed, "method.seed", "a whole number >= 0", minimum=0)
    if m.get("bootstrap"):  # before training, not after it (run_edges refuses a score() without pairs only then)
        raise ConfigError("method.bootstrap", m.bootstrap, "0 for method=edge_pruning (each resample would train the masks again)")


def keeps_chunks(cfg: DictConfig) -> bool:
    """The masks are kept after every epoch: an interrupted run resumes from the last one."""
    return True


def run(cfg: DictConfig, plan: Plan, model) -> MethodOutput:
    from circuitlab.methods.edge_pruning.train import prompts_per_step, train_masks

    graph, pairs, m = plan.method_plan, plan.pairs, cfg.method

    def score():
        batch = min(pairs.n_pairs, m.batch_size or prompts_per_step(model, graph, pairs.width, pairs.n_pairs, cfg.memory_budget_mb))
        store = chunks.current_store()
        masks, record = train_masks(model, pairs, graph, m, batch, cfg.progress, None if store is None else store.directory)
        history = record["history"]
        extra = {"edge_pruning": {**record, "sampler": m.sampler, "loss": m.loss, "final_density": history[-1]["density"] if history else None,
                                  "seconds_per_epoch": sum(h["seconds"] for h in history) / max(1, len(history))}}
        return masks.scores(), extra

    return edges.run_edges(cfg, plan, model, score)
