"""The one data type every task produces: aligned clean / corrupted prompt pairs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from circuitlab.errors import CircuitlabError


class Tokenizer(Protocol):
    """What tasks need from a tokenizer (a Hugging Face tokenizer satisfies it)."""

    def __call__(self, text: str, add_special_tokens: bool = ...) -> dict: ...

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...


@dataclass(frozen=True)
class PromptPairs:
    """Clean / corrupted prompts, token-aligned pair by pair, right-padded to one width.

    `corrupted_answer_tokens` (optional) labels the corrupted prompts, for InterpBench's output-change metric.
    `lengths[b]` counts the real tokens of pair b (BOS included); its final position is `lengths[b] - 1`.
    A clean prompt and its corrupted twin always have the same length, so every position index means the
    same slot in both. `named_positions` maps labels such as IO, S1, S2, END to one index per pair.
    """

    clean_tokens: Int[Tensor, "batch pos"]
    corrupted_tokens: Int[Tensor, "batch pos"]
    answer_tokens: Int[Tensor, " batch"]
    wrong_tokens: Int[Tensor, " batch"]
    lengths: Int[Tensor, " batch"]
    named_positions: dict[str, Int[Tensor, " batch"]]
    clean_texts: list[str]
    corrupted_texts: list[str]
    first_prompt_tokens: list[str]
    dropped: dict[str, int] = field(default_factory=dict)
    track: tuple[str, ...] = ()
    corrupted_answer_tokens: Int[Tensor, " batch"] | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.clean_tokens.shape[0])

    @property
    def width(self) -> int:
        return int(self.clean_tokens.shape[1])

    @property
    def same_length(self) -> bool:
        return bool((self.lengths == self.lengths[0]).all())

    @property
    def labels_differ(self) -> Bool[Tensor, " batch"] | None:
        """Pairs whose clean and corrupted prompts have different labels (None when the task gives no label
        for the corrupted prompt)."""
        if self.corrupted_answer_tokens is None:
            return None
        return self.answer_tokens != self.corrupted_answer_tokens

    @property
    def final_positions(self) -> Int[Tensor, " batch"]:
        return self.lengths - 1

    def to_tensors(self) -> dict[str, object]:
        """The dataset as written to `dataset.pt` (plain tensors, lists and strings only)."""
        return {
            "clean_tokens": self.clean_tokens,
            "corrupted_tokens": self.corrupted_tokens,
            "answer_tokens": self.answer_tokens,
            "wrong_tokens": self.wrong_tokens,
            "lengths": self.lengths,
            "position_labels": {k: v for k, v in self.named_positions.items()},
            "first_prompt_tokens": list(self.first_prompt_tokens),
            "clean_texts": list(self.clean_texts),
            "corrupted_texts": list(self.corrupted_texts),
            **({} if self.corrupted_answer_tokens is None else {"corrupted_answer_tokens": self.corrupted_answer_tokens}),
        }


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of `text` with no special tokens added."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_id(tokenizer: Tokenizer, text: str) -> int | None:
    """The id of `text` if it is exactly one token of the vocabulary (not the unknown token), else None."""
    ids = encode(tokenizer, text)
    return ids[0] if len(ids) == 1 and ids[0] != unknown_token_id(tokenizer) else None


def unknown_token_id(tokenizer: Tokenizer) -> int | None:
    """The id a tokenizer gives words it does not know. None when it has none, or when that id is also its BOS / EOS /
    pad token (byte-level BPEs such as Qwen2's name <|endoftext|> as unknown, yet never produce it for text)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    special = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    return None if unk in special else unk


UNKNOWN_WORDS = "a word unknown to the tokenizer"


def known_rows(tokenizer: Tokenizer, clean: list[list[int]], corrupted: list[list[int]], texts: list[str], skip: int = 0) -> list[int]:
    """Indices of the pairs whose prompts contain no unknown token after their first `skip` tokens (the BOS, which
    may be the token a tokenizer also calls unknown: SmolLM2's <|endoftext|>); one line when none is left."""
    unk = unknown_token_id(tokenizer)
    if unk is None:
        return list(range(len(clean)))
    keep = [i for i, (a, b) in enumerate(zip(clean, corrupted)) if unk not in a[skip:] and unk not in b[skip:]]
    if clean and not keep:
        source = getattr(tokenizer, "name_or_path", "") or "the model's tokenizer"
        raise CircuitlabError(f"task: every prompt has {UNKNOWN_WORDS} ({source}; it reads them as {tokenizer.convert_ids_to_tokens([unk])[0]}), "
                              f"e.g. {texts[0]!r}: use a model whose vocabulary has the task's words")
    return keep


def pad_right(rows: list[list[int]], pad_id: int) -> Int[Tensor, "batch pos"]:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.int64)
    return out


def assemble_pairs(
    tokenizer: Tokenizer,
    pad_id: int,
    clean: list[list[int]],
    corrupted: list[list[int]],
    answers,
    wrongs,
    named: dict[str, object],
    clean_texts: list[str],
    corrupted_texts: list[str],
    dropped: dict[str, int] | None = None,
    first_prompt: list[int] | None = None,
    prefix: list[int] | tuple[int, ...] = (),
    **optional,
) -> PromptPairs:
    """`PromptPairs` from per-pair lists: token rows (right-padded here; lengths are the clean rows'), answer and
    wrong ids, named positions (lists or tensors; END defaults to each prompt's last token), the texts, the
    non-zero drop counts, `first_prompt` (default: the first clean row) for position labels, and `prefix`, the tokens
    every row starts with (the BOS: not checked for unknown words). `optional`: `track`, `corrupted_answer_tokens`
    (ids or None)."""
    keep = known_rows(tokenizer, clean, corrupted, clean_texts, skip=len(prefix))
    if len(keep) < len(clean):
        dropped = {**(dropped or {}), UNKNOWN_WORDS: len(clean) - len(keep)}
        pick = lambda values: [values[i] for i in keep] if isinstance(values, (list, tuple)) else torch.as_tensor(values)[keep]  # noqa: E731
        if first_prompt is not None and keep[0] != 0:  # the labelled prompt was dropped: the same side's first kept one
            first_prompt = corrupted[keep[0]] if first_prompt == corrupted[0] else clean[keep[0]]
        clean, corrupted, answers, wrongs = pick(clean), pick(corrupted), pick(answers), pick(wrongs)
        clean_texts, corrupted_texts = pick(clean_texts), pick(corrupted_texts)
        named = {label: pick(values) for label, values in named.items()}
        if optional.get("corrupted_answer_tokens") is not None:
            optional["corrupted_answer_tokens"] = pick(optional["corrupted_answer_tokens"])
    lengths = torch.tensor([len(row) for row in clean], dtype=torch.int64)
    positions = {label: torch.as_tensor(values, dtype=torch.int64) for label, values in named.items()}
    positions.setdefault("END", lengths - 1)
    if optional.get("corrupted_answer_tokens") is not None:
        optional["corrupted_answer_tokens"] = torch.as_tensor(optional["corrupted_answer_tokens"], dtype=torch.int64)
    return PromptPairs(
        clean_tokens=pad_right(clean, pad_id),
        corrupted_tokens=pad_right(corrupted, pad_id),
        answer_tokens=torch.as_tensor(answers, dtype=torch.int64),
        wrong_tokens=torch.as_tensor(wrongs, dtype=torch.int64),
        lengths=lengths,
        named_positions=positions,
        clean_texts=list(clean_texts),
        corrupted_texts=list(corrupted_texts),
        first_prompt_tokens=tokenizer.convert_ids_to_tokens(first_prompt if first_prompt is not None else clean[0]),
        dropped={k: v for k, v in (dropped or {}).items() if v},
        **optional,
    )


def read_json_lines(path: Path, field: str = "task.path") -> list[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of a JSONL file. A file that cannot be read, is empty, is
    not UTF-8 text, or has a line that is not JSON (garbage, a truncated last line) ends in one line naming the file
    and the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CircuitlabError(f"{field}={path}: no such file" if not path.exists() else f"{field}={path}: not a file")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CircuitlabError(f"{field}={path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise CircuitlabError(f"{field}={path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x}); "
                              "expected one JSON object per line") from None
    records = []
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), start=1):  # not splitlines: JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise CircuitlabError(f"{field}={path}: line {number} is not valid JSON ({err.msg}, column {err.colno})") from None
    if not records:
        raise CircuitlabError(f"{field}={path}: the file is empty; expected one JSON object per line")
    return records


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def require_pairs(n_kept: int, dropped: dict[str, int], field_name: str = "task") -> None:
    """An empty prompt set after filtering is a user error."""
    if n_kept == 0:
        reasons = ", ".join(f"{k}: {v}" for k, v in dropped.items() if v) or "no prompts requested"
        raise CircuitlabError(f"{field_name}: no prompt pairs left after filtering (dropped {reasons})")
