"""Learned edge masks: one parameter per (sender, receiver) pair, sampled into a mask value in [0, 1] per prompt.

Two parametrisations (`method.sampler`):
- `hard_concrete` (Bhaskar et al. 2024, "Finding Transformer Circuits with Edge Pruning", after Louizos et al. 2018):
  log_alpha per edge; z = clamp(sigmoid((log u - log(1 - u) + log_alpha) / beta) (r - l) + l, 0, 1) with
  u ~ U(0, 1), beta = 2/3, (l, r) = (-0.1, 1.1): exactly 0 or 1 with positive probability, differentiable in
  between. The expected share of edges kept is the mean of P(z > 0) = sigmoid(log_alpha - beta log(-l / r))
  (Louizos' expected L0; Edge Pruning sums the sampled z instead). Followed: princeton-nlp/Edge-Pruning
  src/modeling/l0.py (constants, sampling, the deterministic mask) and modeling_fpt2.py (log_alpha initialised
  near 10 there; `INIT` here).
- `ugs` (uniform gradient sampling; Li & Janson 2024, "Optimal ablation for interpretability"): theta per edge,
  p = sigmoid(theta); the mask is 1 - clamp((u - p) / w + 1/2, 0, 1) with w = p (1 - p) (held constant in the
  gradient): 1 with probability about p - w/2, 0 with about 1 - p - w/2, uniform in between otherwise, and the
  gradient reaches theta only through the partial samples, reweighted by how many of the batch's samples of that
  edge were partial. The share kept is the mean of p. Followed: alestolfo/optimalablation
  mask_samplers/EdgeMaskSampler.py (EdgeMaskUnifSampler.sample_modified_unif, complexity_loss) and
  mask_samplers/MaskSampler.py (sample_mask's gradient weights).

The learned keep probability (P(z > 0), or p) is the edge's score: the circuit and MIB's curve rank it.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float
from torch import Tensor

SAMPLERS = ("hard_concrete", "ugs")
LEFT, RIGHT, BETA = -0.1, 1.1, 2 / 3  # hard concrete's stretch and temperature (Louizos et al.; Edge Pruning's l0.py)
EPS = 1e-6
INIT = {"hard_concrete": 3.0, "ugs": 3.0}  # every edge starts kept with probability ~0.95: the clean model


class EdgeMasks(torch.nn.Module):
    """One parameter per (sender, receiver) pair of the graph (those that are no edge stay out of every sum)."""

    def __init__(self, real: Bool[Tensor, "sender receiver"], sampler: str, device: str | torch.device = "cpu"):
        super().__init__()
        self.sampler = sampler
        self.register_buffer("real", real.to(device))
        self.logits = torch.nn.Parameter(torch.full(real.shape, INIT[sampler], device=device, dtype=torch.float32))

    def keep_probability(self) -> Float[Tensor, "sender receiver"]:
        """Each edge's chance to carry its clean value in a sample: P(z > 0) for hard concrete, p for UGS."""
        if self.sampler == "hard_concrete":
            return torch.sigmoid(self.logits - BETA * math.log(-LEFT / RIGHT))
        return torch.sigmoid(self.logits)

    def density(self) -> Tensor:
        """The expected share of the graph's edges kept (differentiable)."""
        return self.keep_probability()[self.real].mean()

    def sample(self, rows: int, generator: torch.Generator) -> Float[Tensor, "row sender receiver"]:
        """A mask per prompt row, in [0, 1] (0 where there is no edge)."""
        u = torch.rand((rows, *self.logits.shape), generator=generator, device=generator.device)
        u = u.to(self.logits.device).clamp(EPS, 1 - EPS)
        if self.sampler == "hard_concrete":
            s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + self.logits) / BETA)
            mask = (s * (RIGHT - LEFT) + LEFT).clamp(0, 1)
        else:
            p = torch.sigmoid(self.logits)
            width = (p * (1 - p)).detach().clamp_min(EPS)
            p = width * p - (width - 1) * p.detach()  # the value of p, its gradient scaled by the window (scale invariance)
            mask = 1 - ((u - p) / width + 0.5).clamp(0, 1)
            partial = ((mask > 1e-3) & (mask < 1 - 1e-3)).sum(0).clamp_min(1)
            weight = rows / partial  # each edge's gradient averaged over its partial samples only
            mask = weight * mask + (1 - weight) * mask.detach()
        return mask * self.real

    @torch.no_grad()
    def scores(self) -> Float[Tensor, "sender receiver"]:
        """The learned keep probabilities in float64 (distinct even near 1), 0 where there is no edge."""
        logits = self.logits.double()
        shift = BETA * math.log(-LEFT / RIGHT) if self.sampler == "hard_concrete" else 0.0
        return (torch.sigmoid(logits - shift) * self.real).cpu()


def target_sparsity(step: int, warmup_steps: int, target: float) -> float:
    """Edge Pruning's schedule: the sparsity the penalty aims at grows linearly from 0 to `target` over
    `warmup_steps` steps, then stays (fpt2_ioi.py, get_current_edge_target_sparsity, linear warmup)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return target
    return target * step / warmup_steps


def sparsity_penalty(masks: EdgeMasks, lambdas: Float[Tensor, " 2"], target: float) -> Tensor:
    """Edge Pruning's Lagrangian term sqrt(n) (lambda_1 (s - t) + lambda_2 (s - t)^2) on the expected sparsity
    s = 1 - density of the graph's n edges; the lambdas are trained to maximise it (so the sparsity is driven to the
    target t), the masks to minimise it.

    Why sqrt(n): Adam divides each mask's step by the root mean square of its gradient. The faithfulness loss is
    O(1) whatever the graph, so its gradient's norm over all n masks is too, and one mask's share of it falls as
    1 / sqrt(n) (measured at the first step: mean |gradient| 7e-4 on toy-ioi's 110 edges, 1.6e-5 on SmolLM2-135M's
    123,211, 44x for 1,120x the edges), while the mean's pull on one mask falls as 1 / n. Scaled by sqrt(n), the
    pull keeps its ratio to the faithfulness gradient, so one `lambda_lr` serves graphs of any size. (Edge Pruning's
    own term is unscaled: its multipliers grow over thousands of steps until they win.)"""
    gap = (1 - masks.density()) - target
    return math.sqrt(float(masks.real.sum())) * (lambdas[0] * gap + lambdas[1] * gap**2)
