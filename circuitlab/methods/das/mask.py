"""Learned masks as DAS's featurizer (`method.featurizer=mask`): which dimensions of the stream itself (no rotation)
carry the variable, as in desiderata-based masking. Each dimension has a logit; training samples a binary-concrete
(relaxed Bernoulli) mask m = sigmoid((logit + log u - log(1 - u)) / T), u uniform, the temperature T annealed from
`temperature_start` to `temperature_end` as Boundless DAS anneals its boundary, and swaps x <- x + m * (s - x); the
loss adds `boundary_penalty` x the mask's mean (the share of dimensions swapped); the logits learn at `boundary_lr`.
Evaluated and saved as the hard mask (logit > 0), written as a width x width basis whose columns are the swapped
dimensions' unit vectors and zeros elsewhere: x + (s - x) B B^T is then the masked swap, so saving, loading,
controls and exports treat it as DAS's basis.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn


class Masks(nn.Module):
    """One mask per point of a group (the `_Interventions` interface: `bases()`, `forward`, `states()`)."""

    kind = "mask"

    def __init__(self, seeds: list[int], width: int, temperature: float):
        super().__init__()
        self.width, self.temperature = width, temperature
        self.logits = nn.Parameter(torch.zeros(len(seeds), width))
        self.noise = torch.Generator().manual_seed(seeds[0])  # the binary-concrete noise, drawn on the CPU (deterministic)

    def bases(self) -> Float[Tensor, "point width"]:
        """Training: a binary-concrete sample per point and dimension; else the hard mask."""
        if not self.training:
            return (self.logits > 0).to(self.logits.dtype)
        u = torch.rand(self.logits.shape, generator=self.noise).clamp(1e-6, 1 - 1e-6).to(self.logits)
        return torch.sigmoid((self.logits + torch.log(u) - torch.log1p(-u)) / self.temperature)

    def share(self) -> Float[Tensor, " point"]:
        """The expected share of dimensions swapped (the penalised size)."""
        return torch.sigmoid(self.logits / self.temperature).mean(-1)

    def forward(self, points: Tensor, base: Float[Tensor, "point cell width"], source: Float[Tensor, "point cell width"], bases: Tensor) -> Tensor:
        return base + bases[points][:, None] * (source - base)

    def states(self) -> list[dict[str, Tensor]]:
        on = (self.logits.detach() > 0).cpu()
        return [{"basis": torch.diag(row.float()), "logits": logits.clone()} for row, logits in zip(on, self.logits.detach().cpu())]


def swapped(basis: Tensor) -> list[int]:
    """The dimensions a mask's basis swaps (its nonzero columns)."""
    return [int(i) for i in (basis.abs().sum(0) > 0).nonzero().flatten()]


def random_mask(basis: Tensor, generator: torch.Generator) -> Tensor:
    """A mask of as many dimensions as `basis` swaps, drawn at random (the random-subspace control of a mask)."""
    width = basis.shape[0]
    chosen = torch.randperm(width, generator=generator)[: len(swapped(basis))]
    out = torch.zeros(width, width)
    out[chosen, chosen] = 1.0
    return out
