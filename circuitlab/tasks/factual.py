"""Factual recall, as in pyvene's head-level tutorial: "The capital of Spain is" -> " Madrid".

A pair is a clean prompt about country A and a corrupted one about country B, the same template: the answer is
A's capital, the wrong token B's. Seed 002 runs the corrupted Spain prompt with activations of the clean Italy
prompt patched in and tracks P(" Madrid") and P(" Rome"): `task.pairs=[[Italy,Spain]]` with
`task.track=[' Madrid',' Rome']`. Named positions: COUNTRY (the country's token) and END.
"""

from __future__ import annotations

import random
import re


from circuitlab.errors import ConfigError
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, encode, require_pairs, single_token_id

CAPITALS = {
    "Spain": "Madrid", "Italy": "Rome", "France": "Paris", "Germany": "Berlin", "Japan": "Tokyo",
    "China": "Beijing", "Russia": "Moscow", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon",
    "Austria": "Vienna", "Poland": "Warsaw", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Denmark": "Copenhagen", "Hungary": "Budapest", "Turkey": "Ankara", "Canada": "Ottawa",
    "Kenya": "Nairobi", "Peru": "Lima", "Cuba": "Havana", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Iran": "Tehran", "Iraq": "Baghdad", "Chile": "Santiago", "Belgium": "Brussels", "Switzerland": "Bern",
}
TEMPLATES = {
    "capital_of": "The capital of [C] is",
    "capital_city": "The capital city of [C] is",
    "is_the_capital": "Which city is the capital of [C]? It is",
}


def validate_config(cfg) -> None:
    for key, every in (("templates", TEMPLATES), ("countries", CAPITALS)):
        value = getattr(cfg, key)
        if not value:
            raise ConfigError(f"task.{key}", "null" if value is None else "[]", ["all", *every], hint="or a list of them")
    for name in _list(cfg.templates, TEMPLATES):
        if name not in TEMPLATES:
            raise ConfigError("task.templates", name, ["all", *TEMPLATES])
    for country in _list(cfg.countries, CAPITALS):
        if country not in CAPITALS:
            raise ConfigError("task.countries", country, ["all", *CAPITALS])
    for pair in cfg.pairs or []:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ConfigError("task.pairs", list(pair), "[clean country, corrupted country] pairs of two different countries")
        for country in pair:
            if country not in CAPITALS:
                raise ConfigError("task.pairs", country, list(CAPITALS))
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")


def _list(value, every) -> list[str]:
    if isinstance(value, str):
        return list(every) if value == "all" else [value]
    return list(value)


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """`task.pairs` if given, else `n_prompts` random (clean, corrupted) country pairs; templates cycle."""
    validate_config(cfg)
    templates = _list(cfg.templates, TEMPLATES)
    if cfg.pairs:
        chosen = [tuple(p) for p in cfg.pairs]
    else:
        rng = random.Random(seed)
        countries = _list(cfg.countries, CAPITALS)
        if len(countries) < 2:
            raise ConfigError("task.countries", countries, "two or more countries")
        chosen = [tuple(rng.sample(countries, 2)) for _ in range(cfg.n_prompts)]
    prompts = [(TEMPLATES[templates[i % len(templates)]], a, b) for i, (a, b) in enumerate(chosen)]
    return tokenize(prompts, tokenizer, prefix, pad_id)


def tokenize(prompts: list[tuple[str, str, str]], tokenizer: Tokenizer, prefix: list[int], pad_id: int) -> PromptPairs:
    """(template, clean country, corrupted country) triples -> PromptPairs; pairs a tokenizer cannot align
    (a country or capital that is not one token) are dropped and counted."""
    dropped = {"country or capital not a single token": 0}
    rows: dict[str, list] = {k: [] for k in ("clean", "corrupted", "answer", "wrong", "country", "clean_text", "corrupted_text")}
    for template, a, b in prompts:
        ids = [single_token_id(tokenizer, " " + x) for x in (a, b, CAPITALS[a], CAPITALS[b])]
        if None in ids:
            dropped["country or capital not a single token"] += 1
            continue
        before = re.split(r"\s*\[C\]", template)[0]
        texts = [template.replace("[C]", country) for country in (a, b)]
        clean, corrupted = (prefix + encode(tokenizer, t) for t in texts)
        rows["clean"].append(clean)
        rows["corrupted"].append(corrupted)
        rows["answer"].append(ids[2])
        rows["wrong"].append(ids[3])
        rows["country"].append(len(prefix) + len(encode(tokenizer, before)))
        rows["clean_text"].append(texts[0])
        rows["corrupted_text"].append(texts[1])
    require_pairs(len(rows["clean"]), dropped)
    return assemble_pairs(tokenizer, pad_id, rows["clean"], rows["corrupted"], rows["answer"], rows["wrong"],
                          {"COUNTRY": rows["country"]}, rows["clean_text"], rows["corrupted_text"], dropped, prefix=prefix)


def vocabulary() -> list[str]:
    """Every word and punctuation mark the task can produce (for word-level toy tokenizers)."""
    words: list[str] = []
    for template in TEMPLATES.values():
        for token in re.findall(r"\w+|[^\w\s]", template.replace("[C]", " ")):
            if token not in words:
                words.append(token)
    return words + [w for pair in CAPITALS.items() for w in pair if w not in words]


def templates_used(cfg) -> dict:
    """The templates the pairs cycle through (name -> text), for the manifest and the report."""
    names = _list(cfg.templates, TEMPLATES)
    return {"templates": {name: TEMPLATES[name] for name in names},
            "note": f"task.templates={cfg.templates if isinstance(cfg.templates, str) else ','.join(names)}, cycled over the pairs"}
