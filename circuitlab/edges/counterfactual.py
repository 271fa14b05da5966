"""What an ablated edge carries instead of its sender's clean output: the sender's output on the pair's
corrupted prompt (`patching`), its mean over the clean prompts at each position (`mean`, and `mean-positional`,
MIB's name for the same thing), or zero (`zero`).

`mean-positional` follows MIB (github hannamw/EAP-IG, src/eap/utils.py, `compute_mean_activations` with
`per_position=True`, which MIB's run_attribution.py calls with the task's own (clean) prompts): each sender's
output summed over the clean prompts at each position, right-padded prompts' padding included, divided by the
number of prompts. That is our `mean`: the two give the same numbers (tests/test_edge_scorers.py checks it), except
at positions some prompts lack, whose padding MIB runs under an attention mask and we without. The name is kept so that MIB's configurations run unchanged. MIB's own `mean` is a different, position-independent
mean (its reference code takes each prompt's last-token output divided by its length and then averages over the
senders as well, so we do not reproduce it); ours has no position-independent mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import sender_outputs
from circuitlab.tasks.base import PromptPairs

COUNTERFACTUALS = ("patching", "mean", "mean-positional", "zero")
MEANS = ("mean", "mean-positional")  # one per position, over the clean prompts


@dataclass
class Sources:
    """The counterfactual senders' outputs, prompt by prompt."""

    kind: str
    mean: Float[Tensor, "1 pos sender d_model"] | None = None

    def outputs(self, model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, rows: Tensor | None = None,
                start: int = 0) -> Tensor:
        """The source outputs of the prompts `rows` (all when None) at the positions from `start` on, broadcastable
        to (batch, pos, sender, d_model): a mean or zero source is one for every prompt."""
        if self.kind == "patching":
            tokens = pairs.corrupted_tokens if rows is None else pairs.corrupted_tokens[rows]
            return sender_outputs(model, tokens.to(model.cfg.device), graph, start)
        if self.kind == "zero":
            return torch.zeros(1, 1, 1, 1, device=model.cfg.device, dtype=model.cfg.dtype)
        return self.mean[:, start:]


def prepare(model: HookedTransformer, pairs: PromptPairs, graph: EdgeGraph, kind: str, batch_size: int) -> Sources:
    """Sources of one kind; the mean is taken once, over every clean prompt."""
    if kind not in MEANS:
        return Sources(kind)
    total = None
    for start in range(0, pairs.n_pairs, batch_size):
        outputs = sender_outputs(model, pairs.clean_tokens[start:start + batch_size].to(model.cfg.device), graph).sum(0, keepdim=True)
        total = outputs if total is None else total + outputs
    return Sources(kind, total / pairs.n_pairs)
