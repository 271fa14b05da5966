"""Embedded toy models: word-level tokenizers, the seeded training recipe, and export in GPT-2 format.

`circuitlab train-toy task=ioi` runs `train_toy("toy-ioi", ...)`; the shipped weights in `embedded/` were made
by exactly this recipe (see each model's `recipe.json`).
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab.models.hf_gpt2 import save_gpt2_dir
from circuitlab.tasks import factual, ioi
from circuitlab.tasks.base import PromptPairs

SPECIAL_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class ToyRecipe:
    """Everything that determines a toy model's weights."""

    task: str
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    n_ctx: int = 32
    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    heldout_pair_fraction: float = 0.2
    train_pool: int = 20000
    eval_prompts: int = 1000
    seed: int = 0


RECIPES = {
    "toy-ioi": ToyRecipe(task="ioi"),
    "toy-facts": ToyRecipe(task="factual", steps=400, train_pool=4000, eval_prompts=0, heldout_pair_fraction=0.0),
}
TASK_TO_TOY = {recipe.task: name for name, recipe in RECIPES.items()}


def word_level_tokenizer_json(words: list[str]) -> str:
    """A `tokenizer.json` for a word-level tokenizer over `words` (whitespace and punctuation split)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {SPECIAL_TOKENS["bos_token"]: 0, SPECIAL_TOKENS["unk_token"]: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer.to_str()


def fast_tokenizer(tokenizer_json: str):
    from transformers import PreTrainedTokenizerFast

    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), **SPECIAL_TOKENS)


def _model_config(recipe: ToyRecipe, d_vocab: int) -> HookedTransformerConfig:
    return HookedTransformerConfig(
        n_layers=recipe.n_layers,
        d_model=recipe.d_model,
        n_heads=recipe.n_heads,
        d_head=recipe.d_model // recipe.n_heads,
        d_mlp=recipe.d_mlp,
        n_ctx=recipe.n_ctx,
        d_vocab=d_vocab,
        act_fn="gelu_new",
        normalization_type="LN",
        positional_embedding_type="standard",
        original_architecture="GPT2LMHeadModel",
        seed=recipe.seed,
        device="cpu",
    )


def ioi_heldout_pairs(recipe: ToyRecipe) -> set[frozenset[str]]:
    """The unordered name pairs never shown in training (seeded)."""
    pairs = [frozenset(p) for p in itertools.combinations(ioi.NAMES, 2)]
    rng = random.Random(recipe.seed)
    return set(rng.sample(pairs, round(recipe.heldout_pair_fraction * len(pairs))))


def ioi_prompt_pairs(recipe: ToyRecipe, tokenizer, n: int, heldout: bool, seed: int) -> PromptPairs:
    """`n` IOI prompts over every template and name, from held-out pairs or from training pairs."""
    held = ioi_heldout_pairs(recipe)
    allowed = (lambda a, b: frozenset((a, b)) in held) if heldout else (lambda a, b: frozenset((a, b)) not in held)
    prompts = ioi.sample_prompts(
        random.Random(seed), n, ioi.NAMES, ioi.PLACES, ioi.OBJECTS, list(ioi.TEMPLATES), list(ioi.PATTERNS), allowed
    )
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["bos_token"])
    return ioi.tokenize_prompts(prompts, tokenizer, bos, bos)


def facts_prompt_pairs(recipe: ToyRecipe, tokenizer, n: int | None, seed: int) -> PromptPairs:
    """`n` random factual prompts, or (n=None) every country in every template once (facts are memorised,
    so the evaluation set is the fact set itself)."""
    bos = tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["bos_token"])
    countries, templates = list(factual.CAPITALS), list(factual.TEMPLATES.values())
    if n is None:
        prompts = [(t, a, countries[(i + 1) % len(countries)]) for t in templates for i, a in enumerate(countries)]
    else:
        rng = random.Random(seed)
        prompts = [(rng.choice(templates), *rng.sample(countries, 2)) for _ in range(n)]
    return factual.tokenize(prompts, tokenizer, bos, bos)


def task_data(recipe: ToyRecipe, tokenizer) -> tuple[PromptPairs, PromptPairs]:
    """(training pool, held-out evaluation set) for the recipe's task."""
    if recipe.task == "ioi":
        train = ioi_prompt_pairs(recipe, tokenizer, recipe.train_pool, heldout=False, seed=recipe.seed + 1)
        return train, ioi_prompt_pairs(recipe, tokenizer, recipe.eval_prompts, heldout=True, seed=recipe.seed + 2)
    return facts_prompt_pairs(recipe, tokenizer, recipe.train_pool, recipe.seed + 1), facts_prompt_pairs(recipe, tokenizer, None, 0)


VOCABULARIES = {"ioi": ioi.vocabulary, "factual": factual.vocabulary}


def final_logits(model: HookedTransformer, pairs: PromptPairs, tokens: torch.Tensor | None = None) -> torch.Tensor:
    tokens = pairs.clean_tokens if tokens is None else tokens
    logits = model(tokens)
    return logits[torch.arange(tokens.shape[0]), pairs.final_positions]


def accuracy(model: HookedTransformer, pairs: PromptPairs) -> float:
    """Fraction of prompts whose top final-position token is the answer."""
    with torch.no_grad():
        return (final_logits(model, pairs).argmax(-1) == pairs.answer_tokens).float().mean().item()


def train_toy(name: str, out_dir: Path, steps: int | None = None, progress: bool = True) -> dict:
    """Train toy model `name` by its recipe and save it in GPT-2 format under `out_dir`; returns the report."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(name, Path(out_dir), steps, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _train(name: str, out_dir: Path, steps: int | None, progress: bool) -> dict:
    recipe = RECIPES[name]
    if steps is not None:
        recipe = ToyRecipe(**{**asdict(recipe), "steps": steps})
    torch.manual_seed(recipe.seed)
    tokenizer_json = word_level_tokenizer_json(VOCABULARIES[recipe.task]())
    tokenizer = fast_tokenizer(tokenizer_json)
    started = time.time()
    train, heldout = task_data(recipe, tokenizer)
    model = HookedTransformer(_model_config(recipe, len(tokenizer)))
    model.unembed.b_U.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / recipe.steps)))
    generator = torch.Generator().manual_seed(recipe.seed)
    bar = tqdm(range(recipe.steps), desc=f"train {name}", disable=not progress)
    with torch.enable_grad():
        for _ in bar:
            idx = torch.randint(0, train.n_pairs, (recipe.batch_size,), generator=generator)
            logits = model(train.clean_tokens[idx])[torch.arange(len(idx)), train.final_positions[idx]]
            loss = torch.nn.functional.cross_entropy(logits, train.answer_tokens[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    report = {
        "name": name,
        "recipe": asdict(recipe),
        "final_loss": round(loss.item(), 5),
        "heldout_pair_accuracy" if recipe.task == "ioi" else "fact_accuracy": accuracy(model, heldout),
        "train_accuracy": accuracy(model, _subset(train, 1000)),
        "train_seconds": round(time.time() - started, 1),
        "torch": torch.__version__,
    }
    save_gpt2_dir(model, Path(out_dir), tokenizer_json, SPECIAL_TOKENS, extra={"circuitlab_toy": name})
    (Path(out_dir) / "recipe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _subset(pairs: PromptPairs, n: int) -> PromptPairs:
    n = min(n, pairs.n_pairs)
    return PromptPairs(
        clean_tokens=pairs.clean_tokens[:n],
        corrupted_tokens=pairs.corrupted_tokens[:n],
        answer_tokens=pairs.answer_tokens[:n],
        wrong_tokens=pairs.wrong_tokens[:n],
        lengths=pairs.lengths[:n],
        named_positions={k: v[:n] for k, v in pairs.named_positions.items()},
        clean_texts=pairs.clean_texts[:n],
        corrupted_texts=pairs.corrupted_texts[:n],
        first_prompt_tokens=pairs.first_prompt_tokens,
    )
