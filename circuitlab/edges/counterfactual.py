"""What an ablated edge carries instead of its sender's clean output: the sender's output on the pair's
corrupted prompt (`patching`), its mean over the clean prompts at each position (`mean`), or zero (`zero`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import sender_outputs
from circuitlab.tasks.base import PromptPairs

COUNTERFACTUALS = ("patching", "mean", "zero")


@dataclass
class Sources:
    """The counterfactual senders' outputs, prompt by prompt."""

    kind: str
    mean: Float[Tensor, "1 pos sender d_model"] | None = None

    def for_rows(self, model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, rows: Tensor,
                 like: Tensor) -> Float[Tensor, "batch pos sender d_model"]:
        """The source outputs of the prompts `rows` (`like`: their clean outputs, for shape)."""
        if self.kind == "patching":
            return sender_outputs(model, pairs.corrupted_tokens[rows].to(model.cfg.device), graph)
        if self.kind == "zero":
            return torch.zeros_like(like)
        return self.mean.expand_as(like)

    def of_all(self, model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph) -> Tensor:
        """The source outputs of every prompt, broadcastable to (batch, pos, sender, d_model)."""
        if self.kind == "patching":
            return sender_outputs(model, pairs.corrupted_tokens.to(model.cfg.device), graph)
        if self.kind == "zero":
            return torch.zeros(1, 1, 1, 1, device=model.cfg.device, dtype=model.cfg.dtype)
        return self.mean


def prepare(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, kind: str, batch_size: int) -> Sources:
    """Sources of one kind; the mean is taken once, over every clean prompt."""
    if kind != "mean":
        return Sources(kind)
    total = None
    for start in range(0, pairs.n_pairs, batch_size):
        outputs = sender_outputs(model, pairs.clean_tokens[start:start + batch_size].to(model.cfg.device), graph).sum(0, keepdim=True)
        total = outputs if total is None else total + outputs
    return Sources(kind, total / pairs.n_pairs)
