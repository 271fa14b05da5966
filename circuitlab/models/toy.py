"""Embedded toy models: word-level tokenizers, the seeded training recipe, and export in GPT-2 format.

`circuitlab train-toy task=ioi` runs `train_toy("toy-ioi", ...)`; the shipped weights in `embedded/` were made
by exactly this recipe (see each model's `recipe.json`). toy-addition's data and evaluation are in `toy_addition.py`.
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

from circuitlab.models import toy_addition
from circuitlab.models.hf_gpt2 import save_gpt2_dir
from circuitlab.tasks import addition, factual, ioi
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
    "toy-addition": ToyRecipe(task="addition", n_ctx=53, steps=600, lr=2e-3, train_pool=20000, eval_prompts=500),
}
TASK_TO_TOY = {recipe.task: name for name, recipe in RECIPES.items()}
# toy-addition trains on one CPU thread: bitwise the same weights whatever the core count (and on 2 busy cores,
# one thread is faster than two)
TRAIN_THREADS = {"toy-addition": 1}


def word_level_tokenizer_json(words: list[str], pattern: str | None = None) -> str:
    """A `tokenizer.json` for a word-level tokenizer over `words`: whitespace and punctuation split, or (with
    `pattern`) each match of the regex `pattern` a word of its own, decoded by plain concatenation."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {SPECIAL_TOKENS["bos_token"]: 0, SPECIAL_TOKENS["unk_token"]: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    if pattern is None:
        tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
        tokenizer.decoder = decoders.Fuse()
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
    return ioi.tokenize_prompts(prompts, tokenizer, [bos], bos)


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
    return factual.tokenize(prompts, tokenizer, [bos], bos)


def task_data(recipe: ToyRecipe, tokenizer) -> tuple[PromptPairs | toy_addition.AnswerTargets, PromptPairs | None]:
    """(training pool, held-out evaluation set) for the recipe's task (toy-addition evaluates in `toy_addition`)."""
    if recipe.task == "addition":
        return toy_addition.training_set(recipe, tokenizer), None
    if recipe.task == "ioi":
        train = ioi_prompt_pairs(recipe, tokenizer, recipe.train_pool, heldout=False, seed=recipe.seed + 1)
        return train, ioi_prompt_pairs(recipe, tokenizer, recipe.eval_prompts, heldout=True, seed=recipe.seed + 2)
    return facts_prompt_pairs(recipe, tokenizer, recipe.train_pool, recipe.seed + 1), facts_prompt_pairs(recipe, tokenizer, None, 0)


VOCABULARIES = {"ioi": ioi.vocabulary, "factual": factual.vocabulary, "addition": addition.vocabulary}
TOKEN_PATTERNS = {"addition": addition.TOKEN_PATTERN}


def task_tokenizer_json(task: str) -> str:
    """The word-level `tokenizer.json` of a task's toy model."""
    return word_level_tokenizer_json(VOCABULARIES[task](), TOKEN_PATTERNS.get(task))


def final_logits(model: HookedTransformer, pairs: PromptPairs, tokens: torch.Tensor | None = None) -> torch.Tensor:
    tokens = pairs.clean_tokens if tokens is None else tokens
    logits = model(tokens)
    return logits[torch.arange(tokens.shape[0]), pairs.final_positions]


def accuracy(model: HookedTransformer, pairs: PromptPairs) -> float:
    """Fraction of prompts whose top final-position token is the answer."""
    with torch.no_grad():
        return (final_logits(model, pairs).argmax(-1) == pairs.answer_tokens).float().mean().item()


SAVED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "recipe.json")
MAX_STEPS = 100_000  # the recipes train 1,500 to 4,000 steps


def check_out_dir(out: Path) -> None:
    """`train-toy out=`: a new or empty dir, or a toy model's (its files are rewritten). A dir holding other files
    is refused in one line, before any training: the model's files would land among them."""
    from circuitlab.errors import CircuitlabError

    out = Path(out)
    others = sorted(p.name for p in out.iterdir() if p.name not in SAVED_FILES) if out.is_dir() else []
    if others:
        listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise CircuitlabError(f"out={out}: holds files that are not a toy model's ({listed}); name a new dir, an empty one or a toy "
                              "model's dir (its files are rewritten)")


def train_toy(name: str, out_dir: Path, steps: int | None = None, progress: bool = True) -> dict:
    """Train toy model `name` by its recipe and save it in GPT-2 format under `out_dir`; returns the report."""
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(TRAIN_THREADS.get(name, threads))
    try:
        return _train(name, Path(out_dir), steps, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


def _train(name: str, out_dir: Path, steps: int | None, progress: bool) -> dict:
    recipe = RECIPES[name]
    if steps is not None:
        recipe = ToyRecipe(**{**asdict(recipe), "steps": steps})
    torch.manual_seed(recipe.seed)
    tokenizer_json = task_tokenizer_json(recipe.task)
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
            loss = batch_loss(model, train, idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            if bar.n % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    seconds = round(time.time() - started, 1)
    report = {"name": name, "recipe": asdict(recipe), "final_loss": round(loss.item(), 5), **evaluate(recipe, model, tokenizer, train, heldout)}
    report.update({"train_seconds": seconds, "torch": torch.__version__})
    save_gpt2_dir(model, Path(out_dir), tokenizer_json, SPECIAL_TOKENS, extra={"circuitlab_toy": name})
    (Path(out_dir) / "recipe.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def batch_loss(model: HookedTransformer, train, idx: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the sampled prompts: on every answer (toy-addition) or on the final position."""
    if isinstance(train, toy_addition.AnswerTargets):
        return toy_addition.answer_loss(model, train, idx)
    logits = model(train.clean_tokens[idx])[torch.arange(len(idx)), train.final_positions[idx]]
    return torch.nn.functional.cross_entropy(logits, train.answer_tokens[idx])


def evaluate(recipe: ToyRecipe, model: HookedTransformer, tokenizer, train, heldout: PromptPairs | None) -> dict:
    """The recipe.json accuracies of a trained toy model."""
    if recipe.task == "addition":
        scores = toy_addition.evaluate(model, recipe, tokenizer, seed=recipe.seed + 2)
        return {**scores, "train_accuracy": toy_addition.train_accuracy(model, train)}
    return {
        "heldout_pair_accuracy" if recipe.task == "ioi" else "fact_accuracy": accuracy(model, heldout),
        "train_accuracy": accuracy(model, _subset(train, 1000)),
    }


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


def load_hand_set(model, state: dict):
    """Load hand-set weights into `model`, keeping TransformerLens' own buffers (causal masks, IGNORE), in eval mode."""
    for name in [n for n in state if n.endswith("IGNORE") or n.endswith(".mask")]:
        state[name] = model.state_dict()[name]
    model.load_state_dict(state)
    return model.eval()


def save_hand_set(model, directory, vocabulary: list[str], n_ctx: int, circuit_json: str) -> None:
    """A hand-set model in the InterpBench layout (TransformerLens config as JSON, safetensors weights), with a
    word-level tokenizer of `vocabulary` and its circuit.json."""
    import json
    from pathlib import Path

    from circuitlab.models.interpbench import save_checkpoint

    directory = Path(directory)
    save_checkpoint(model, directory, safetensors=True)
    (directory / "tokenizer.json").write_text(word_level_tokenizer_json(vocabulary))
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": n_ctx, **SPECIAL_TOKENS}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
    (directory / "circuit.json").write_text(circuit_json)
