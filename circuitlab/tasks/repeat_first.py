"""Does the last symbol repeat the first? ("a c f a" -> yes): the task of the `known-circuit` model.

Clean prompts end with their first symbol (answer "yes"); each corrupted twin ends with a different symbol
(its label is "no"), so every pair's labels differ and InterpBench's output-change metric applies. The
middle symbols are drawn at random. Named positions: FIRST (the first symbol), END.
"""

from __future__ import annotations

import random


from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, encode, single_token_id

SYMBOLS = ("a", "b", "c", "d", "e", "f")
MAX_LENGTH = 7


def validate_config(cfg) -> None:
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")
    if not 2 <= cfg.length <= MAX_LENGTH:
        raise ConfigError("task.length", cfg.length, f"2..{MAX_LENGTH} (symbols per prompt)")


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """`cfg.n_prompts` seeded pairs of `cfg.length` symbols."""
    ids = {word: single_token_id(tokenizer, word) for word in (*SYMBOLS, "yes", "no")}
    missing = [word for word, i in ids.items() if i is None]
    if missing:
        raise CircuitlabError(f"task=repeat_first: {missing[0]!r} is not one token for this model (use model=known-circuit)")
    rng = random.Random(seed)
    clean_texts, corrupted_texts = [], []
    for _ in range(cfg.n_prompts):
        first = rng.choice(SYMBOLS)
        middle = [rng.choice(SYMBOLS) for _ in range(cfg.length - 2)]
        last = rng.choice([s for s in SYMBOLS if s != first])
        clean_texts.append(" ".join([first, *middle, first]))
        corrupted_texts.append(" ".join([first, *middle, last]))
    clean = [prefix + encode(tokenizer, t) for t in clean_texts]
    corrupted = [prefix + encode(tokenizer, t) for t in corrupted_texts]
    n = len(clean)
    return assemble_pairs(tokenizer, pad_id, clean, corrupted, [ids["yes"]] * n, [ids["no"]] * n, {"FIRST": [len(prefix)] * n},
                          clean_texts, corrupted_texts, corrupted_answer_tokens=[ids["no"]] * n, prefix=prefix)
