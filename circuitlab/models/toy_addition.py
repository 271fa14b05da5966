"""Training data and held-out evaluation of the embedded toy-addition model (the recipe is in `toy.py`).

A training prompt holds 8 demonstrations and a query, one offset k in -2..+2 for the whole prompt, setting1
sampling; the loss covers every demonstration answer and the query answer, so 0- to 8-shot predictions are all
trained. A seeded share of the (a, b) pairs is never shown in training; the evaluation asks queries on them.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from circuitlab.tasks import addition
from circuitlab.tasks.base import PromptPairs

NMAX = 9
OFFSETS = (-2, -1, 0, 1, 2)
TRAIN_DEMOS = 8
EVAL_SHOTS = (1, 2, 4, 8)
BAR_OFFSETS, BAR_SHOTS = (0, 1), (2, 4, 8)
IGNORE = -100


@dataclass(frozen=True)
class AnswerTargets:
    """Training prompts and, at each `=`, the answer token that follows it (IGNORE elsewhere)."""

    tokens: Int[Tensor, "batch pos"]
    targets: Int[Tensor, "batch pos"]

    @property
    def n_pairs(self) -> int:
        return int(self.tokens.shape[0])


def heldout_pairs(recipe) -> set[addition.Pair]:
    """The (a, b) pairs never shown in training, neither as demonstration nor as query (seeded)."""
    pairs = [(a, b) for a in range(NMAX + 1) for b in range(NMAX + 1)]
    return set(random.Random(recipe.seed).sample(pairs, round(recipe.heldout_pair_fraction * len(pairs))))


def training_set(recipe, tokenizer) -> AnswerTargets:
    """`recipe.train_pool` prompts of the training pairs, each with all its sums written (offset k included)."""
    rng, held, vocab = random.Random(recipe.seed + 1), heldout_pairs(recipe), tokenizer.get_vocab()
    rows = []
    for _ in range(recipe.train_pool):
        k = rng.choice(OFFSETS)
        prompt = addition.sample_prompt(rng, TRAIN_DEMOS, NMAX, k, "setting1", allowed=lambda p: p not in held)
        text = f"{prompt.text(k)}{sum(prompt.query) + k}"
        rows.append([tokenizer.bos_token_id] + [vocab[t] for t in _words(text)])
    full = torch.tensor(rows, dtype=torch.int64)
    tokens, following = full[:, :-1], full[:, 1:]
    targets = torch.where(tokens == vocab["="], following, torch.full_like(following, IGNORE))
    return AnswerTargets(tokens, targets)


def _words(text: str) -> list[str]:
    return re.findall(addition.TOKEN_PATTERN, text)


def answer_loss(model, train: AnswerTargets, idx: Tensor) -> Tensor:
    """Mean cross-entropy over every answer of the sampled prompts."""
    logits = model(train.tokens[idx])
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), train.targets[idx].flatten(), ignore_index=IGNORE)


def train_accuracy(model, train: AnswerTargets, n: int = 1000) -> float:
    """Fraction of answers predicted right on the first `n` training prompts, 1 to 8 shots (the 0-shot answer
    cannot tell the offset)."""
    with torch.no_grad():
        predicted = model(train.tokens[:n]).argmax(-1)
    mask = train.targets[:n] != IGNORE
    mask[:, int(mask[0].nonzero()[0])] = False
    return (predicted[mask] == train.targets[:n][mask]).float().mean().item()


def heldout_prompt_pairs(recipe, tokenizer, n: int, shots: int, offset: int, seed: int) -> PromptPairs:
    """`n` fresh prompts whose query is a held-out pair (demonstrations: any pair, setting1); the corrupted
    prompts show offset `offset` (0: the same as the clean ones)."""
    rng = random.Random(seed)
    queries = sorted(p for p in heldout_pairs(recipe) if sum(p) + offset >= 0)
    prompts = [addition.sample_prompt(rng, shots, NMAX, offset, "setting1", query=rng.choice(queries)) for _ in range(n)]
    bos = tokenizer.bos_token_id
    return addition.tokenize(prompts, tokenizer, [bos], bos, offset)


def contrast_accuracy(model, pairs: PromptPairs) -> float:
    """Fraction of corrupted (offset) prompts whose top final-position token is the offset answer."""
    with torch.no_grad():
        logits = model(pairs.corrupted_tokens)[torch.arange(pairs.n_pairs), pairs.final_positions]
    return (logits.argmax(-1) == pairs.wrong_tokens).float().mean().item()


def evaluate(model, recipe, tokenizer, seed: int) -> dict:
    """Held-out accuracy per offset k and shot count, and its minimum over the bar (k = 0, +1 at 2, 4, 8 shots)."""
    table = {
        _key(k): {
            str(shots): round(contrast_accuracy(model, heldout_prompt_pairs(recipe, tokenizer, recipe.eval_prompts, shots, k, seed + shots)), 4)
            for shots in EVAL_SHOTS
        }
        for k in OFFSETS
    }
    bar = min(table[_key(k)][str(shots)] for k in BAR_OFFSETS for shots in BAR_SHOTS)
    return {"heldout_min_accuracy": bar, "heldout_accuracy_by_k_shots": table}


def _key(k: int) -> str:
    return f"k={k:+d}" if k else "k=0"
