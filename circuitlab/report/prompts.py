"""A few prompt pairs token by token (from examples.json, written by the run): each position's index, the names the
task gives it, and which tokens differ between the pair's two prompts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from circuitlab.runfiles import read_examples
from circuitlab.report.values import token_text


@dataclass(frozen=True)
class Token:
    text: str  # '' for a position past this prompt's end
    classes: str  # "named", "diff", "pad", space-separated


@dataclass(frozen=True)
class Pair:
    marks: list[str]  # per position: the task's names for it ('' for none)
    prompts: list[tuple[str, list[Token]]]  # (the prompt's name, its tokens), clean then corrupted
    answers: str  # "answer: ' Mary', wrong: ' John'"


def pair_view(pair: dict, names: list[str]) -> Pair:
    first, second = pair.get("clean", []), pair.get("corrupted", [])
    length = int(pair.get("length", max(len(first), len(second))))
    named: dict[int, list[str]] = {}
    for label, index in (pair.get("positions") or {}).items():
        named.setdefault(int(index), []).append(label)
    width = max(len(first), len(second))

    def tokens(row: list[str], other: list[str]) -> list[Token]:
        out = []
        for i in range(width):
            token = row[i] if i < len(row) else ""
            classes = [c for c, on in (("named", i in named), ("diff", i < len(other) and token != other[i]), ("pad", i >= length)) if on]
            out.append(Token(token_text(token), " ".join(classes)))
        return out

    answers = ", ".join(f"{k}: {v!r}" for k, v in (pair.get("answers") or {}).items())
    marks = [" ".join(named.get(i, [])) for i in range(width)]
    return Pair(marks, [(str(names[0]), tokens(first, second)), (str(names[1]), tokens(second, first))], answers)


def examples(run_dir: Path) -> dict | None:
    """{n_pairs, pairs}: the pairs examples.json shows; None when the run dir has none."""
    data = read_examples(run_dir)  # checked (runfiles.DamagedFile when damaged)
    if data is None or not isinstance(data.get("pairs"), list):
        return None
    names = data.get("prompt_names", ["clean", "corrupted"])
    return {"n_pairs": data.get("n_pairs", "?"), "pairs": [pair_view(pair, names) for pair in data["pairs"]]}
