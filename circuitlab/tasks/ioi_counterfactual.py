"""IOI counterfactual pairs for interchange interventions and DAS, as in pyvene's IOI tutorial (seed 000).

A pair is a *base* prompt (run) and a *source* prompt (whose activations are swapped in), one template. Two causal
variables:
- `position`: is the indirect object the first or the second name? Sources use the base's own names in pattern
  ABB or BAB (`source_names: base`, the seed's design), or two other names (`new`); the label is the base's IO if
  the source's first subject position equals the base's, else the base's S (the answer flips when the position
  is swapped in). With the base's own names, swapping the whole stream at the IO's position swaps in the
  subject's name, which also gives the label; with new names it gives a third name, so only the position
  variable itself can.
- `name`: the IO name itself. Sources use two new names in pattern CDD or DCD; the label is the source's IO.
Train and test are disjoint in objects, places and templates, and for `position` also in names (the `name`
variable draws every prompt's names from a fixed 20-name set, as the seed does). The seed's test set pairs each
base pattern with the other source pattern only (ABB with BAB / DCD, BAB with ABB / CDD).

In `PromptPairs` terms: corrupted = base, clean = source, answer = the counterfactual label, wrong = the other
name; interchange-intervention accuracy (IIA) is the share of pairs whose top token is the label.
"""

from __future__ import annotations

import random


from circuitlab.errors import ConfigError

PROMPT_NAMES = ("source", "base")  # what its clean and corrupted prompts are (the report's labels)
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, require_pairs, single_token_id
from circuitlab.tasks.ioi import NAMES, OBJECTS, PLACES, POSITION_LABELS, TEMPLATES, IOIPrompt, encode_pair

VARIABLES = ("position", "name")
SOURCE_NAMES = ("base", "new")
BASE_PATTERNS = ("ABB", "BAB")
SOURCE_PATTERNS = {"position": ("ABB", "BAB"), "name": ("CDD", "DCD")}
TEST_SOURCE = {"position": {"ABB": "BAB", "BAB": "ABB"}, "name": {"ABB": "DCD", "BAB": "CDD"}}
NAME_SET = 20  # the `name` variable's fixed name set


def validate_config(cfg) -> None:
    if cfg.variable not in VARIABLES:
        raise ConfigError("task.variable", cfg.variable, VARIABLES)
    if not cfg.base_patterns:
        raise ConfigError("task.base_patterns", "[]", f"one or more of {', '.join(BASE_PATTERNS)}")
    if not cfg.templates:
        raise ConfigError("task.templates", "null" if cfg.templates is None else "[]", ["all", *TEMPLATES], hint="or a list of them")
    for pattern in cfg.base_patterns:
        if pattern not in BASE_PATTERNS:
            raise ConfigError("task.base_patterns", pattern, BASE_PATTERNS)
    if cfg.get("source_names", "base") not in SOURCE_NAMES:
        raise ConfigError("task.source_names", cfg.source_names, f"{', '.join(SOURCE_NAMES)} (the position variable's source prompts: "
                          "the base's own names, or two other names)")
    allowed = SOURCE_PATTERNS[cfg.variable]
    for pattern in _source_patterns(cfg):
        if pattern not in allowed:
            need = "the base's own letters A and B" if cfg.variable == "position" else "two new names C and D"
            raise ConfigError("task.source_patterns", pattern, f"{', '.join(allowed)} (the {cfg.variable} variable needs {need})")
    for name in _templates(cfg):
        if name not in TEMPLATES:
            raise ConfigError("task.templates", name, ["all", *TEMPLATES])
    if len(_templates(cfg)) < 2:
        raise ConfigError("task.templates", list(_templates(cfg)), "two or more templates (train and test use different ones)")
    for key in ("n_prompts", "n_train"):
        if cfg[key] < 1:
            raise ConfigError(f"task.{key}", cfg[key], "a positive integer")


def _source_patterns(cfg) -> list[str]:
    return list(cfg.source_patterns) if cfg.source_patterns else list(SOURCE_PATTERNS[cfg.variable])


def _templates(cfg) -> list[str]:
    if isinstance(cfg.templates, str):
        return list(TEMPLATES) if cfg.templates == "all" else [cfg.templates]
    return list(cfg.templates)


def split_lists(variable: str, split: str, templates: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names, places, objects, templates of a split: halves of each list, templates split in two."""
    first = split == "train"
    half = lambda xs: xs[: len(xs) // 2] if first else xs[len(xs) // 2 :]  # noqa: E731
    cut = max(1, len(templates) // 2)
    names = NAMES[:NAME_SET] if variable == "name" else half(NAMES)
    return names, half(PLACES), half(OBJECTS), templates[:cut] if first else templates[cut:]


def sample_counterfactuals(
    rng: random.Random, variable: str, combos: list[tuple[str, str]], per_combo: int,
    names: list[str], places: list[str], objects: list[str], templates: list[str], source_names: str = "base",
) -> list[tuple[IOIPrompt, IOIPrompt, str, str]]:
    """(base, source, label, wrong) for `per_combo` pairs of each (base pattern, source pattern)."""
    out = []
    for base_pattern, source_pattern in combos:
        for _ in range(per_combo):
            io, s, c, d = rng.sample(names, 4)
            base = IOIPrompt(rng.choice(templates), base_pattern, io, s, c, rng.choice(places), rng.choice(objects))
            if variable == "position":
                own = (io, s, c) if source_names == "base" else (c, d, io)
                source = IOIPrompt(base.template, source_pattern, *own, base.place, base.obj)
                label, wrong = (io, s) if source_pattern == base_pattern else (s, io)
            else:
                pattern = "ABB" if source_pattern == "CDD" else "BAB"
                source = IOIPrompt(base.template, pattern, c, d, io, base.place, base.obj)
                label, wrong = c, io
            out.append((base, source, label, wrong))
    return out


def build_split(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int, split: str) -> PromptPairs:
    """The train split (`n_train` pairs over every base x source pattern) or the test split (`n_prompts`
    pairs, each base pattern with the other source pattern)."""
    return tokenize_counterfactuals(split_quads(cfg, seed, split), tokenizer, prefix, pad_id)


def split_quads(cfg, seed: int, split: str) -> list[tuple[IOIPrompt, IOIPrompt, str, str]]:
    """(base, source, label, wrong) of a split, before tokenisation."""
    validate_config(cfg)
    names, places, objects, templates = split_lists(cfg.variable, split, _templates(cfg))
    if split == "train":
        combos = [(b, s) for b in cfg.base_patterns for s in _source_patterns(cfg)]
        n = cfg.n_train
    else:
        combos = [(b, TEST_SOURCE[cfg.variable][b]) for b in cfg.base_patterns]
        n = cfg.n_prompts
    per_combo = -(-n // len(combos))
    rng = random.Random(seed + (0 if split == "test" else 1))
    quads = sample_counterfactuals(rng, cfg.variable, combos, per_combo, names, places, objects, templates, cfg.get("source_names", "base"))
    rng.shuffle(quads)
    return quads[:n]


# Candidate causal variables (`method.hypotheses`): each says what the model answers when the variable takes the
# source's value, so each relabels the same base / source pairs. A slot is the first or second name of the first
# clause; the IO takes the first slot in pattern ABB, the second in BAB.
HYPOTHESES = {
    "position": "the IO's slot: the answer is the base's name in the slot where the source has its IO",
    "name": "the IO name: the answer is the source's IO",
    "io_token": "the name at the base's IO position: the answer is the source's name in that slot",
}
BASE_ANSWER = "base_answer"  # not a hypothesis: the base's own answer (an intervention that changes nothing gives it)


def _io_first(prompt: IOIPrompt) -> bool:
    return prompt.pattern == "ABB"


def hypothesis_label(name: str, base: IOIPrompt, source: IOIPrompt) -> str:
    """The name the model answers under hypothesis `name` when the variable takes the source's value."""
    same_slot = _io_first(base) == _io_first(source)
    if name == "position":
        return base.io if same_slot else base.s
    if name == "name":
        return source.io
    if name == "io_token":
        return source.io if same_slot else source.s
    if name == BASE_ANSWER:
        return base.io
    raise ValueError(f"unknown hypothesis {name!r}")


def hypothesis_labels(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int, split: str, names: list[str]) -> dict:
    """Each hypothesis' counterfactual labels (token ids) for the pairs `build_split` gives (the same pairs, in the
    same order: a hypothesis' label is always one of the pair's four names, so the same pairs are kept)."""
    quads = split_quads(cfg, seed, split)
    pairs = tokenize_counterfactuals(quads, tokenizer, prefix, pad_id)
    out = {}
    for name in names:
        relabelled = tokenize_counterfactuals([(b, s, hypothesis_label(name, b, s), w) for b, s, _, w in quads], tokenizer, prefix, pad_id)
        if not (relabelled.n_pairs == pairs.n_pairs and bool((relabelled.corrupted_tokens == pairs.corrupted_tokens).all())):
            raise AssertionError(f"hypothesis {name}: its pairs differ from the split's")
        out[name] = relabelled.answer_tokens
    return out


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """The test split (what every method evaluates on); DAS trains on `build_split(..., "train")`."""
    return build_split(cfg, tokenizer, prefix, pad_id, seed, "test")


def tokenize_counterfactuals(quads, tokenizer: Tokenizer, prefix: list[int], pad_id: int) -> PromptPairs:
    """(base, source, label, wrong) -> PromptPairs (corrupted = base, clean = source); pairs whose names are
    not single tokens or whose base and source differ in length are dropped and counted."""
    dropped = {"names not single tokens": 0, "base/source lengths differ": 0}
    rows: dict[str, list] = {k: [] for k in ("base", "source", "label", "wrong", "base_text", "source_text")}
    positions: dict[str, list[int]] = {k: [] for k in POSITION_LABELS}
    for base, source, label, wrong in quads:
        ids = [single_token_id(tokenizer, " " + name) for name in (base.io, base.s, source.io, source.s, label, wrong)]
        if None in ids:
            dropped["names not single tokens"] += 1
            continue
        encoded = encode_pair(tokenizer, base, source.fillers(), prefix)  # base and source share the template
        if encoded is None:
            dropped["base/source lengths differ"] += 1
            continue
        base_ids, source_ids, named, base_text, source_text = encoded
        for key in POSITION_LABELS:
            positions[key].append(named[key])
        for key, value in zip(rows, (base_ids, source_ids, ids[4], ids[5], base_text, source_text)):
            rows[key].append(value)
    require_pairs(len(rows["base"]), dropped)
    return assemble_pairs(tokenizer, pad_id, rows["source"], rows["base"], rows["label"], rows["wrong"], positions,
                          rows["source_text"], rows["base_text"], dropped, first_prompt=rows["base"][0],
                          prefix=prefix)


def templates_used(cfg) -> dict:
    """The templates of the test pairs (what IIA is measured on) and of the training pairs (name -> text), for the
    manifest and the report: train and test use different halves of `task.templates`."""
    chosen = _templates(cfg)
    test, train = split_lists(cfg.variable, "test", chosen)[3], split_lists(cfg.variable, "train", chosen)[3]
    return {"templates": {name: TEMPLATES[name] for name in test}, "train_templates": {name: TEMPLATES[name] for name in train},
            "note": f"task.templates={cfg.templates if isinstance(cfg.templates, str) else ','.join(chosen)}: "
                    f"test pairs use the second half ({', '.join(test)}), training pairs the first ({', '.join(train)})"}

