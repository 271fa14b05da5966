"""Off-by-k addition in context, after the function-induction paper (seed 003).

A prompt shows `n_demos` demonstrations `a+b=c`, newline separated, then a query: "2+3=5\n4+1=5\n5+2=". The clean
(normal) prompt shows plain sums and expects a+b; the corrupted (contrast) prompt shows the same pairs with sums
a+b+k (k = `offset`) and expects a+b+k. The answer is the normal sum, the wrong token the contrast sum, so
logit_diff = logit(normal) - logit(contrast), the seed's convention. Settings constrain the demonstrations
against the query: normal (no demonstration pair is the query pair), setting1 (no demonstration sum is the query
sum), setting2 (the query sum is among the demonstration sums, the query pair is not). `task.path` reads the
paper's JSONL instead. Named positions: QA, QB (the last token of the query's operands) and END (the final `=`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, encode, json_type, read_json_lines, require_pairs, unknown_token_id

SETTINGS = ("normal", "setting1", "setting2")
NMAX = (9, 99, 999)
ANSWER_TOKENS = ("whole", "last")
POSITION_LABELS = ("QA", "QB", "END")
TOKEN_PATTERN = r"\d+|[+=\n]"
DRAWS_PER_DEMO = 50
Pair = tuple[int, int]


@dataclass(frozen=True)
class AdditionPrompt:
    """Demonstration pairs and a query pair, before the sums are written."""

    demos: tuple[Pair, ...]
    query: Pair

    def text(self, offset: int = 0) -> str:
        lines = [f"{a}+{b}={a + b + offset}" for a, b in self.demos]
        return "\n".join([*lines, f"{self.query[0]}+{self.query[1]}="])

    def lowest_sum(self) -> int:
        return min(a + b for a, b in (*self.demos, self.query))


def sample_prompt(
    rng: random.Random,
    n_demos: int,
    nmax: int,
    offset: int,
    setting: str,
    allowed: Callable[[Pair], bool] | None = None,
    query: Pair | None = None,
) -> AdditionPrompt:
    """One prompt of distinct demonstration pairs meeting `setting` against the query (drawn, or given); every
    value shown, a+b+offset included, is >= 0. `allowed` filters the drawn pairs. A bounded number of draws:
    constraints that cannot be met end in one line."""
    budget = DRAWS_PER_DEMO * (n_demos + 1)

    def draw(fits: Callable[[Pair], bool]) -> Pair:
        nonlocal budget
        while budget > 0:
            budget -= 1
            pair = (rng.randint(0, nmax), rng.randint(0, nmax))
            if sum(pair) + min(offset, 0) >= 0 and (allowed is None or allowed(pair)) and fits(pair):
                return pair
        raise CircuitlabError(
            f"task.n_demos={n_demos}: cannot draw that many distinct demonstrations for task.setting={setting} with "
            f"task.nmax={nmax}, task.offset={offset} ({DRAWS_PER_DEMO * (n_demos + 1)} draws); use fewer demonstrations"
        )

    demos: list[Pair] = []
    while True:
        q = query if query is not None else draw(lambda p: True)
        if setting != "setting2":
            break
        s = sum(q)
        twins = [(a, s - a) for a in range(max(0, s - nmax), min(nmax, s) + 1) if (a, s - a) != q]
        twins = [t for t in twins if allowed is None or allowed(t)]
        if twins:
            demos.append(rng.choice(twins))
            break
        if query is not None:
            raise CircuitlabError(f"task.setting=setting2: no other pair has the sum {s} of the query {q}")
    sums = {sum(q)} if setting == "setting1" else set()
    while len(demos) < n_demos:
        demos.append(draw(lambda p: p != q and p not in demos and sum(p) not in sums))
    rng.shuffle(demos)
    return AdditionPrompt(tuple(demos), q)


def read_jsonl(path: Path, n_demos: int) -> list[AdditionPrompt]:
    """The paper's lines {"demonstration": [[a, b], ...], "inference": [a, b]}, the first `n_demos`
    demonstrations of each; a malformed line is reported by its number."""
    prompts = []
    for number, record in read_json_lines(path):
        where = f"task.path={path}: line {number}"
        demos = record.get("demonstration") if isinstance(record, dict) else None
        query = record.get("inference") if isinstance(record, dict) else None
        if not isinstance(demos, list) or not all(map(_is_pair, demos)) or not _is_pair(query):
            got = "" if isinstance(record, dict) else f" (it is {json_type(record)})"
            raise CircuitlabError(f'{where} is not {{"demonstration": [[a, b], ...], "inference": [a, b]}} with integers >= 0{got}')
        if len(demos) < n_demos:
            raise CircuitlabError(f"{where} has {len(demos)} demonstrations; task.n_demos={n_demos} needs that many")
        prompts.append(AdditionPrompt(tuple(tuple(d) for d in demos[:n_demos]), tuple(query)))
    return prompts


def _is_pair(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(type(v) is int and v >= 0 for v in value)


def validate_config(cfg) -> None:
    """Check the task's values (and read `task.path`) before anything is loaded."""
    if cfg.setting not in SETTINGS:
        raise ConfigError("task.setting", cfg.setting, SETTINGS)
    if cfg.nmax not in NMAX:
        raise ConfigError("task.nmax", cfg.nmax, NMAX)
    if cfg.n_demos < 1:
        raise ConfigError("task.n_demos", cfg.n_demos, "a positive integer")
    if cfg.offset == 0 or cfg.offset < -2 * cfg.nmax:
        raise ConfigError("task.offset", cfg.offset, f"a nonzero integer >= {-2 * cfg.nmax}", hint="0 makes the contrast prompt the normal one")
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")
    if cfg.answer_token not in ANSWER_TOKENS:
        raise ConfigError("task.answer_token", cfg.answer_token, ANSWER_TOKENS)
    if cfg.path:
        read_jsonl(Path(cfg.path).expanduser(), cfg.n_demos)


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """The first `n_prompts` prompts of `task.path`, or `n_prompts` seeded draws for `task.setting`."""
    validate_config(cfg)
    if cfg.path:
        prompts = read_jsonl(Path(cfg.path).expanduser(), cfg.n_demos)[: cfg.n_prompts]
    else:
        rng = random.Random(seed)
        prompts = [sample_prompt(rng, cfg.n_demos, cfg.nmax, cfg.offset, cfg.setting) for _ in range(cfg.n_prompts)]
    return tokenize(prompts, tokenizer, prefix, pad_id, cfg.offset, cfg.answer_token)


UNKNOWN, SPLIT = "a number not a known token", "answer not a single token"


def answer_id(tokenizer: Tokenizer, value: int, answer_token: str = "whole") -> int | str:
    """The token of `value` (whole: it must be one token; last: its last token), or why there is none."""
    ids = encode(tokenizer, str(value))
    unk = unknown_token_id(tokenizer)
    if not ids or (unk is not None and unk in ids):
        return UNKNOWN
    return SPLIT if answer_token == "whole" and len(ids) != 1 else ids[-1]


def tokenize(
    prompts: list[AdditionPrompt], tokenizer: Tokenizer, prefix: list[int], pad_id: int, offset: int, answer_token: str = "whole"
) -> PromptPairs:
    """Normal (clean) / contrast (corrupted) prompts -> PromptPairs; pairs a tokenizer cannot align are dropped
    and counted."""
    dropped = {"a shown sum below zero": 0, UNKNOWN: 0, SPLIT: 0, "clean/corrupted lengths differ": 0}
    keys = ("clean", "corrupted", "answer", "wrong", "QA", "QB", "END", "clean_text", "corrupted_text")
    rows: dict[str, list] = {k: [] for k in keys}
    unk = unknown_token_id(tokenizer)
    for prompt in prompts:
        if prompt.lowest_sum() + min(offset, 0) < 0:
            dropped["a shown sum below zero"] += 1
            continue
        answer, wrong = (answer_id(tokenizer, sum(prompt.query) + k, answer_token) for k in (0, offset))
        texts = [prompt.text(k) for k in (0, offset)]
        clean, corrupted = (prefix + encode(tokenizer, t) for t in texts)
        reason = next((r for r in (answer, wrong) if isinstance(r, str)), None)
        if unk is not None and (unk in clean[len(prefix):] or unk in corrupted[len(prefix):]):
            reason = UNKNOWN
        if reason is not None:
            dropped[reason] += 1
            continue
        spots = [_query_positions(tokenizer, prompt, k, len(prefix)) for k in (0, offset)]
        if len(clean) != len(corrupted) or spots[0] != spots[1]:
            dropped["clean/corrupted lengths differ"] += 1
            continue
        for key, value in zip(keys, (clean, corrupted, answer, wrong, *spots[0], len(clean) - 1, *texts)):
            rows[key].append(value)
    if not rows["clean"] and dropped[SPLIT]:
        raise CircuitlabError(
            f"task.answer_token=whole: no answer is a single token for this model's tokenizer ({dropped[SPLIT]} of "
            f"{len(prompts)} prompts); task.answer_token=last uses the answer's last token (the seed's choice)"
        )
    require_pairs(len(rows["clean"]), dropped)
    return assemble_pairs(tokenizer, pad_id, rows["clean"], rows["corrupted"], rows["answer"], rows["wrong"],
                          {k: rows[k] for k in POSITION_LABELS}, rows["clean_text"], rows["corrupted_text"], dropped,
                          prefix=prefix)


def _query_positions(tokenizer: Tokenizer, prompt: AdditionPrompt, offset: int, start: int = 1) -> tuple[int, int]:
    """Token indices (counted from the prompt's first token, `start` tokens before the text: the BOS) of the last
    token of the query's first and second operand."""
    a, b = prompt.query
    head = prompt.text(offset)[: -len(f"{a}+{b}=")]
    return start - 1 + len(encode(tokenizer, f"{head}{a}")), start - 1 + len(encode(tokenizer, f"{head}{a}+{b}"))


def vocabulary(nmax: int = 9, max_offset: int = 2) -> list[str]:
    """Every token of prompts with operands 0..nmax and offsets up to `max_offset` (for word-level toy
    tokenizers, which split on TOKEN_PATTERN): each number is one word."""
    return [str(n) for n in range(2 * nmax + max_offset + 1)] + ["+", "=", "\n"]
