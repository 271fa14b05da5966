"""Tokens as a reader writes them, for every label of figures and reports (no torch).

Tokenizers name their vocabulary entries with markers: byte-level BPE (GPT-2, Llama 3, SmolLM, Qwen) writes a space
as `Ġ`, a newline as `Ċ` and other bytes as letters of its own (`Ã©` for é); SentencePiece (Llama 2, Gemma, Mistral)
writes a space as `▁` and bytes it has no piece for as `<0x0A>`. `readable_token` undoes them (`Ġwas` -> " was",
`▁was` -> " was", `<0x0A>` -> "\\n"); `token_label` makes the short one-line form an axis label needs (" was" ->
"was", a lone space -> "␣", a newline -> "↵"); `position_text` does it to a results.csv position label ("3:Ġwas" ->
"3:was"). Applying any of them twice changes nothing. `RunContext` adds what the run dir's examples.json says about
positions: the role the task gives each index (IO, S1, S2, END) and where the prompts first differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "↵"}
_BYTE_FALLBACK = re.compile(r"(?:<0x[0-9A-Fa-f]{2}>)+")
_INDEX_LABEL = re.compile(r"^(-?\d+):(.*)$", re.DOTALL)


@lru_cache(maxsize=1)
def _byte_level() -> dict[str, int]:
    """GPT-2's byte-to-letter table, reversed: the letter a byte-level BPE writes for each byte -> the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    letters = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in letters:
            letters[b] = chr(256 + shifted)
            shifted += 1
    return {letter: b for b, letter in letters.items()}


def _from_byte_level(token: str) -> str | None:
    """The text of a byte-level BPE token, or None when `token` is not one (a letter outside the table, or bytes that
    are not UTF-8: a piece of a longer character, left as it is)."""
    table = _byte_level()
    if not token or any(ch not in table for ch in token):
        return None
    try:
        return bytes(table[ch] for ch in token).decode("utf-8")
    except UnicodeDecodeError:
        return None


def _from_byte_fallback(match: re.Match) -> str:
    data = bytes(int(piece, 16) for piece in re.findall(r"<0x([0-9A-Fa-f]{2})>", match.group(0)))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return match.group(0)


def readable_token(token: str) -> str:
    """The text a token stands for, markers undone, spaces and newlines kept."""
    token = str(token)
    if "▁" in token or _BYTE_FALLBACK.search(token):  # SentencePiece
        return _BYTE_FALLBACK.sub(_from_byte_fallback, token.replace("▁", " "))
    decoded = _from_byte_level(token)
    return token if decoded is None else decoded


def token_label(token: str, max_chars: int = 14) -> str:
    """A token as one short label: its text without surrounding spaces; a token of whitespace only written with
    visible marks (␣ ↵ ⇥); inner newlines as ↵; cut to `max_chars` with …; an empty token as ∅."""
    text = readable_token(token)
    if text and not text.strip():
        shown = "".join(VISIBLE.get(ch, "␣") for ch in text)
    else:
        shown = text.strip()
        for ch in "\n\r\t":
            shown = shown.replace(ch, VISIBLE[ch])
    if not shown:
        return "∅"
    return shown if len(shown) <= max_chars else shown[: max_chars - 1] + "…"


def position_text(label: str, max_chars: int = 14) -> str:
    """A results.csv position label as a figure shows it: an index label `3:Ġwas` with its token readable
    (`3:was`); named positions (IO, END, all, 0-16) as they are."""
    label = "" if label is None else str(label)
    match = _INDEX_LABEL.match(label)
    if not match:
        return label
    return f"{match.group(1)}:{token_label(match.group(2), max_chars)}"


@dataclass
class RunContext:
    """What a figure needs to know about a run beyond its rows, from examples.json: the role each position index
    holds in every prompt pair (IO, S1, ...; "IO/S1" where the pairs split between two roles), and the first position
    at which a pair's two prompts differ."""

    roles: dict[int, str] = field(default_factory=dict)
    first_difference: int | None = None

    @classmethod
    def of(cls, run_dir: Path) -> RunContext:
        from circuitlab.runfiles import read_examples

        try:
            data = read_examples(run_dir)
        except ValueError:  # a damaged examples.json (runfiles.DamagedFile): no roles known
            return cls()
        if data is None:
            return cls()
        return cls(roles=position_roles(data), first_difference=first_difference(data))

    def position(self, label: str) -> str:
        """A position label as figures show it: the token readable, and its role where the task names one
        (`10:John (S2)`)."""
        text = position_text(label)
        index, sep, token = text.partition(":")
        if sep and index.lstrip("-").isdigit() and int(index) in self.roles and self.roles[int(index)] != token:
            return f"{text} ({self.roles[int(index)]})"
        return text


def position_roles(examples: dict) -> dict[int, str]:
    """index -> role from examples.json's `roles` ({role: {index: pairs}}, over every pair of the run): the roles
    found at an index that together cover every pair, joined by "/"."""
    roles = examples.get("roles") if isinstance(examples, dict) else None
    n_pairs = examples.get("n_pairs") if isinstance(examples, dict) else None
    if not isinstance(roles, dict) or not isinstance(n_pairs, int):
        return {}
    at: dict[int, list[tuple[str, int]]] = {}
    for role, where in roles.items():
        for index, count in (where or {}).items():
            at.setdefault(int(index), []).append((role, int(count)))
    return {index: "/".join(role for role, _ in found) for index, found in sorted(at.items()) if sum(c for _, c in found) >= n_pairs}


def first_difference(examples: dict) -> int | None:
    """The first position at which some pair's two prompts differ (examples.json's `differ`, over every pair; else
    its example pairs)."""
    if not isinstance(examples, dict):
        return None
    differ = examples.get("differ")
    if isinstance(differ, dict) and differ:
        return min(int(i) for i in differ)
    firsts = [next((i for i, (a, b) in enumerate(zip(p.get("clean", []), p.get("corrupted", []))) if a != b), None)
              for p in examples.get("pairs") or [] if isinstance(p, dict)]
    firsts = [f for f in firsts if f is not None]
    return min(firsts) if firsts else None
