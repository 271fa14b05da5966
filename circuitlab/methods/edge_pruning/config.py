"""Edge pruning: its config schema (method/edge_pruning.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EdgePruningConfig(EdgeMethodConfig):
    """Learned edge masks (Bhaskar et al. 2024's edge pruning; UGS): a mask per edge trained for `epochs` passes over
    the prompts (`batch_size` prompts a step, null: as many as `memory_budget_mb` holds) with Adam at `lr`, to keep
    the clean run's output (`loss`: kl | logit_diff) while the expected share of edges removed is driven to
    `target_sparsity` (reached linearly over the first `sparsity_warmup` of the steps; the Lagrange multipliers learn
    at `lambda_lr`). `sampler`: hard_concrete (edge pruning) | ugs (uniform gradient sampling). `seed`: the masks'
    samples and the prompts' order. The learned keep probabilities are the edges' scores."""

    name: str = "edge_pruning"
    sampler: str = "hard_concrete"
    loss: str = "kl"
    epochs: int = 50
    lr: float = 0.1
    lambda_lr: float = 0.05
    target_sparsity: float = 0.95
    sparsity_warmup: float = 0.8
    seed: int = 0
