"""Indirect object identification (IOI), after the IOI paper and pyvene's IOI data design.

A template such as "When [N1] and [N2] went to the [PLACE], [S] gave the [OBJECT] to" is filled with two names.
Pattern ABB puts the indirect object (IO) first ("When Mary and John ..., John gave ... to" -> Mary); pattern
BAB puts the subject first ("When John and Mary ..., John gave ... to" -> Mary). The answer is the IO, the wrong
token is the subject S. Corruptions: `abc` replaces the second subject mention S2 by a third name C (the model
no longer knows who the subject is); `swap` exchanges the two names everywhere (the answer flips).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass


from circuitlab.errors import ConfigError
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, encode, require_pairs, single_token_id

NAMES = [
    "Mary", "John", "Tom", "James", "Dan", "Sid", "Martin", "Amy", "Paul", "Anna",
    "Mark", "Sarah", "Kevin", "Lisa", "Brian", "Emma", "Eric", "Laura", "Jason", "Rachel",
    "Adam", "Kate", "Ryan", "Helen", "Steve", "Alice", "Peter", "Susan", "George", "Linda",
    "David", "Karen", "Michael", "Jessica", "Robert", "Emily", "Daniel", "Grace", "Chris", "Anne",
]
PLACES = [
    "store", "park", "school", "garden", "hospital", "station", "office", "house", "restaurant", "beach",
    "library", "market", "church", "hotel", "bank", "museum", "airport", "kitchen", "farm", "zoo",
]
OBJECTS = [
    "ring", "book", "ball", "bone", "apple", "drink", "bag", "key", "coin", "cup",
    "pen", "hat", "box", "card", "basket", "letter", "flower", "phone", "watch", "cake",
]
TEMPLATES = {
    "then": "Then, [N1] and [N2] went to the [PLACE]. [S] gave the [OBJECT] to",
    "when": "When [N1] and [N2] went to the [PLACE], [S] gave the [OBJECT] to",
    "after": "After [N1] and [N2] got the [OBJECT] at the [PLACE], [S] decided to give it to",
    "while": "While [N1] and [N2] were working at the [PLACE], [S] gave the [OBJECT] to",
    "later": "The [PLACE] was quiet, so [N1] and [N2] sat down. Later, [S] handed the [OBJECT] to",
}
PATTERNS = ("ABB", "BAB")
CORRUPTIONS = ("abc", "swap")
SPLITS = ("train", "test", "all")
POSITION_LABELS = ("IO", "S1", "S2", "END")
_SLOT = re.compile(r"\[(N1|N2|S|PLACE|OBJECT)\]")


@dataclass(frozen=True)
class IOIPrompt:
    """One IOI sentence before tokenisation: which template, which pattern and which fillers."""

    template: str
    pattern: str
    io: str
    s: str
    third: str
    place: str
    obj: str

    def fillers(self, corrupted: str | None = None) -> dict[str, str]:
        first, second = (self.io, self.s) if self.pattern == "ABB" else (self.s, self.io)
        slots = {"N1": first, "N2": second, "S": self.s, "PLACE": self.place, "OBJECT": self.obj}
        if corrupted == "abc":
            slots["S"] = self.third
        elif corrupted == "swap":
            swap = {self.io: self.s, self.s: self.io}
            slots.update({k: swap[slots[k]] for k in ("N1", "N2", "S")})
        return slots


def render(template: str, slots: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    """Split a filled template into text pieces; returns the pieces and which piece holds each name slot.

    Each filler is its own piece with a leading space (as BPE tokenizers see names: " Mary"), so that a
    slot's token index is the token count of everything before it.
    """
    pieces: list[str] = []
    slot_piece: dict[str, int] = {}
    cursor = 0
    for match in _SLOT.finditer(template):
        before = template[cursor : match.start()]
        if before.endswith(" "):
            before = before[:-1]
        if before:
            pieces.append(before)
        slot_piece[match.group(1)] = len(pieces)
        pieces.append(" " + slots[match.group(1)] if pieces else slots[match.group(1)])
        cursor = match.end()
    if template[cursor:]:
        pieces.append(template[cursor:])
    return pieces, slot_piece


def tokenize_pieces(tokenizer: Tokenizer, pieces: list[str], prefix: list[int]) -> tuple[list[int], list[int]]:
    """Token ids of the joined pieces (after `prefix`, the BOS if any) and the token index where each piece starts."""
    text = "".join(pieces)
    ids = prefix + encode(tokenizer, text)
    starts = []
    for i in range(len(pieces)):
        starts.append(len(prefix) + len(encode(tokenizer, "".join(pieces[:i]))) if i else len(prefix))
    return ids, starts


def encode_pair(tokenizer: Tokenizer, prompt: IOIPrompt, other_slots: dict[str, str], prefix: list[int]):
    """Token ids of `prompt` and of its template filled with `other_slots` (a corruption, or a counterfactual
    source), the prompt's named positions and both texts; None when the two do not align token for token."""
    template = TEMPLATES[prompt.template]
    pieces, slot_piece = render(template, prompt.fillers())
    other_pieces, _ = render(template, other_slots)
    ids, starts = tokenize_pieces(tokenizer, pieces, prefix)
    other_ids, other_starts = tokenize_pieces(tokenizer, other_pieces, prefix)
    if len(ids) != len(other_ids) or starts != other_starts:
        return None
    first, second = starts[slot_piece["N1"]], starts[slot_piece["N2"]]
    io_pos, s1_pos = (first, second) if prompt.pattern == "ABB" else (second, first)
    named = dict(zip(POSITION_LABELS, (io_pos, s1_pos, starts[slot_piece["S"]], len(ids) - 1)))
    return ids, other_ids, named, "".join(pieces), "".join(other_pieces)


def split_lists(split: str, templates: list[str]) -> tuple[list[str], list[str], list[str], list[str]]:
    """Names, places, objects and templates of a split. Train and test are disjoint in names, places and
    objects (first / second half, as pyvene does); with several templates, the last quarter (at least one)
    is held out for test."""
    if split == "all":
        return NAMES, PLACES, OBJECTS, templates
    half = lambda xs, first: xs[: len(xs) // 2] if first else xs[len(xs) // 2 :]  # noqa: E731
    first = split == "train"
    if len(templates) > 1:
        n_test = max(1, len(templates) // 4)
        templates = templates[:-n_test] if first else templates[-n_test:]
    return half(NAMES, first), half(PLACES, first), half(OBJECTS, first), templates


def sample_prompts(
    rng: random.Random,
    n: int,
    names: list[str],
    places: list[str],
    objects: list[str],
    templates: list[str],
    patterns: list[str],
    pair_allowed=None,
) -> list[IOIPrompt]:
    """`n` prompts, patterns cycling so that ABB and BAB are balanced; `pair_allowed(io, s)` filters pairs."""
    prompts = []
    while len(prompts) < n:
        io, s, third = rng.sample(names, 3)
        if pair_allowed is not None and not pair_allowed(io, s):
            continue
        prompts.append(
            IOIPrompt(
                template=rng.choice(templates),
                pattern=patterns[len(prompts) % len(patterns)],
                io=io,
                s=s,
                third=third,
                place=rng.choice(places),
                obj=rng.choice(objects),
            )
        )
    return prompts


def validate_config(cfg) -> None:
    """Check the task's names before anything is loaded."""
    if cfg.split not in SPLITS:
        raise ConfigError("task.split", cfg.split, SPLITS)
    if cfg.corruption not in CORRUPTIONS:
        raise ConfigError("task.corruption", cfg.corruption, CORRUPTIONS)
    if not cfg.patterns:
        raise ConfigError("task.patterns", "[]", f"one or more of {', '.join(PATTERNS)}")
    for p in cfg.patterns:
        if p not in PATTERNS:
            raise ConfigError("task.patterns", p, PATTERNS)
    if not cfg.templates:
        raise ConfigError("task.templates", "null" if cfg.templates is None else "[]", ["all", *TEMPLATES], hint="or a list of them")
    for t in _template_names(cfg):
        if t not in TEMPLATES:
            raise ConfigError("task.templates", t, ["all", *TEMPLATES])
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")


def _template_names(cfg) -> list[str]:
    templates = cfg.templates
    if isinstance(templates, str):
        templates = list(TEMPLATES) if templates == "all" else [templates]
    return list(templates)


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """Sample `cfg.n_prompts` IOI pairs for `cfg.split`, tokenised and filtered (see module docstring)."""
    validate_config(cfg)
    names, places, objects, templates = split_lists(cfg.split, _template_names(cfg))
    prompts = sample_prompts(random.Random(seed), cfg.n_prompts, names, places, objects, templates, list(cfg.patterns))
    return tokenize_prompts(prompts, tokenizer, prefix, pad_id, cfg.corruption, cfg.fixed_length)


def tokenize_prompts(
    prompts: list[IOIPrompt],
    tokenizer: Tokenizer,
    prefix: list[int],
    pad_id: int,
    corruption: str = "abc",
    fixed_length: int | None = None,
) -> PromptPairs:
    """Tokenise prompts into PromptPairs, dropping (and counting) pairs a tokenizer cannot align."""
    dropped = {"names not single tokens": 0, "clean/corrupted lengths differ": 0, "not fixed_length": 0}
    clean_rows, corrupt_rows, answers, wrongs = [], [], [], []
    positions: dict[str, list[int]] = {k: [] for k in POSITION_LABELS}
    clean_texts, corrupt_texts = [], []
    for prompt in prompts:
        answer = single_token_id(tokenizer, " " + prompt.io)
        wrong = single_token_id(tokenizer, " " + prompt.s)
        third = single_token_id(tokenizer, " " + prompt.third)
        if answer is None or wrong is None or third is None:
            dropped["names not single tokens"] += 1
            continue
        encoded = encode_pair(tokenizer, prompt, prompt.fillers(corruption), prefix)
        if encoded is None:
            dropped["clean/corrupted lengths differ"] += 1
            continue
        clean_ids, bad_ids, named, clean_text, bad_text = encoded
        if fixed_length is not None and len(clean_ids) != fixed_length:
            dropped["not fixed_length"] += 1
            continue
        for label in POSITION_LABELS:
            positions[label].append(named[label])
        clean_rows.append(clean_ids)
        corrupt_rows.append(bad_ids)
        answers.append(answer)
        wrongs.append(wrong)
        clean_texts.append(clean_text)
        corrupt_texts.append(bad_text)
    require_pairs(len(clean_rows), dropped)
    return assemble_pairs(tokenizer, pad_id, clean_rows, corrupt_rows, answers, wrongs, positions, clean_texts, corrupt_texts, dropped,
                          prefix=prefix)


def vocabulary() -> list[str]:
    """Every word and punctuation mark the IOI task can produce (for word-level toy tokenizers)."""
    words: list[str] = []
    for template in TEMPLATES.values():
        for token in re.findall(r"\w+|[^\w\s]", _SLOT.sub(" ", template)):
            if token not in words:
                words.append(token)
    return words + [w for w in NAMES + PLACES + OBJECTS if w not in words]


def templates_used(cfg) -> dict:
    """The templates this config's prompts are drawn from (name -> text) and why that set, for the manifest and the
    report: `split` train / test keeps part of several templates (the last quarter, at least one, is held out for
    test), so `templates: all` with the default `split: test` uses the last template alone."""
    chosen = _template_names(cfg)
    used = split_lists(cfg.split, chosen)[3]
    note = f"task.templates={cfg.templates if isinstance(cfg.templates, str) else ','.join(chosen)}, task.split={cfg.split}"
    if used != chosen:
        held = "the held-out last quarter (at least one)" if cfg.split == "test" else "all but the held-out last quarter"
        note += f": {held} of {', '.join(chosen)}; task.split=all uses every one"
    return {"templates": {name: TEMPLATES[name] for name in used}, "note": note}
