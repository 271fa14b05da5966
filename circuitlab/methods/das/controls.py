"""DAS's controls and hypotheses (`method.controls`, `method.hypotheses`): what each fit beside the real one trains
on, and the random copy of the model.

- random_subspace: an untrained random subspace of the real fit's size at each location (random_states below);
- shuffled_labels: the same training from the same start on labels shuffled across pairs (every pair takes another
  pair's label, neither its own nor its other answer), scored against the test labels shuffled the same way: how
  well the intervention fits arbitrary targets;
- random_model: the same training on a copy of the model whose weights are drawn again as the architecture
  initialises them (seeded): how much of the IIA a rotation finds without any trained computation;
- a hypothesis: the task's labels for another causal variable on the same pairs (the task's `hypothesis_labels`).
"""

from __future__ import annotations

import copy
import zlib

import torch
from torch import Tensor, nn

from circuitlab.methods.das.config import DASTraining as Training
from circuitlab.methods.das.mask import random_mask

CONTROLS = ("random_subspace", "random_model", "shuffled_labels")
TRAINED_CONTROLS = ("random_model", "shuffled_labels")  # trained: not available from saved interventions (method.load)
HYPOTHESIS = "hypothesis:"  # a hypothesis fit's name is HYPOTHESIS + its name


def shuffled(labels: Tensor, seed: int, avoid: Tensor | None = None) -> Tensor:
    """The labels shuffled across pairs: in a random order, each pair takes the label of the nearest pair before it
    whose label is not one of the pair's own `avoid` tokens ([pair, m]: its label and its other answer, so that
    neither leaving the answer as it is nor the variable's own flip scores the target); a pair for which no other
    label qualifies keeps the one of the pair just before it."""
    n = len(labels)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    values = labels.tolist()
    banned = [set(row) for row in avoid.tolist()] if avoid is not None else [{v} for v in values]
    out = labels.clone()
    for k, i in enumerate(order):
        before = (order[(k - step) % n] for step in range(1, n))
        out[i] = next((values[j] for j in before if values[j] not in banned[i]), values[order[k - 1]])
    return out


def random_model(model, seed: int):
    """A copy of `model` with every weight drawn again as TransformerLens initialises the architecture (its
    `init_weights`: `init_mode` and `initializer_range`, seeded by `seed`), biases 0 and norm scales 1. The global
    random state is left as it was."""
    fresh = copy.deepcopy(model)
    fresh.cfg = copy.deepcopy(model.cfg)
    fresh.cfg.seed = seed
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        for name, param in fresh.named_parameters():
            if "W_" not in name:  # biases (b_*) and norm parameters (ln*.w / ln*.b)
                param.fill_(1.0 if name.endswith(".w") else 0.0)
        fresh.init_weights()
    return fresh


def random_states(states: list[dict], keys: list[str], width: int, training: Training) -> list[dict[str, Tensor]]:
    """The random-subspace control of each location: an orthonormal basis of the real fit's size drawn from the
    location's own seed (Boundless DAS: a random rotation with the real fit's learned boundary)."""
    k = training.low_rank_dimension if training.intervention == "das" else width
    out = []
    for state, key in zip(states, keys):
        generator = torch.Generator().manual_seed(training.seed + zlib.crc32(f"{key}|random_subspace".encode()))
        if training.featurizer == "mask":  # as many random dimensions as the real mask swaps
            out.append({"basis": random_mask(state["basis"], generator)})
            continue
        basis = torch.empty(width, k)
        nn.init.orthogonal_(basis, generator=generator)
        out.append({"basis": basis, **{name: state[name] for name in ("boundary", "temperature") if name in state}})
    return out
