"""Prompt pairs from a JSONL file: run your own data without writing Python.

One JSON object per line:
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Anna gave a drink to",
     "answer": " Mary", "wrong": " John", "track": [" Anna"]}
`corrupted_answer` is optional: the corrupted prompt's own label, for `method.metrics=[output_change]` (given on
every line or none). `track` is optional; its tokens join `task.track` for `method.metrics=[prob]`. The clean and corrupted prompts
of a line must have the same number of tokens; answer, wrong and tracked strings must be one token each.
Named positions: END (each prompt's last token).
"""

from __future__ import annotations

import json
from pathlib import Path


from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.tasks.base import PromptPairs, Tokenizer, assemble_pairs, encode, single_token_id

REQUIRED = ("clean", "corrupted", "answer", "wrong")
POSITION_LABELS = ("END",)


def validate_config(cfg) -> None:
    if not cfg.path:
        raise ConfigError("task.path", None, "a JSONL file of prompt pairs")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise CircuitlabError(f"task.path={cfg.path}: no such file")
    read_lines(path)
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")


def read_lines(path: Path) -> list[dict]:
    """The file's records; a malformed line is reported by its number."""
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise CircuitlabError(f"task.path={path}: line {number} is not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise CircuitlabError(f"task.path={path}: line {number} is not a JSON object")
        missing = [k for k in REQUIRED if not isinstance(record.get(k), str)]
        if missing:
            raise CircuitlabError(f"task.path={path}: line {number} lacks field {missing[0]!r} (required: {', '.join(REQUIRED)}; optional: track)")
        if "corrupted_answer" in record and not isinstance(record["corrupted_answer"], str):
            raise CircuitlabError(f"task.path={path}: line {number}: 'corrupted_answer' must be a string")
        track = record.get("track", [])
        if not isinstance(track, list) or not all(isinstance(t, str) for t in track):
            raise CircuitlabError(f"task.path={path}: line {number}: 'track' must be a list of strings")
        records.append({**record, "line": number})
    if not records:
        raise CircuitlabError(f"task.path={path}: no prompt pairs in the file")
    return records


def build_pairs(cfg, tokenizer: Tokenizer, bos_id: int, pad_id: int, seed: int) -> PromptPairs:
    """The first `task.n_prompts` pairs of the file, tokenised (BOS first)."""
    path = Path(cfg.path).expanduser()
    records = read_lines(path)[: cfg.n_prompts]
    clean_rows, corrupt_rows, answers, wrongs, corrupted_answers, tracked = [], [], [], [], [], []
    for record in records:
        where = f"task.path={path}: line {record['line']}"
        clean = [bos_id] + encode(tokenizer, record["clean"])
        corrupted = [bos_id] + encode(tokenizer, record["corrupted"])
        if len(clean) != len(corrupted):
            raise CircuitlabError(f"{where}: clean and corrupted prompts have {len(clean)} and {len(corrupted)} tokens; they must match")
        ids = {}
        for key in [k for k in ("answer", "wrong", "corrupted_answer") if k in record]:
            ids[key] = single_token_id(tokenizer, record[key])
            if ids[key] is None:
                raise CircuitlabError(f"{where}: {key} {record[key]!r} is not a single token for this model")
        for text in record.get("track", []):
            if single_token_id(tokenizer, text) is None:
                raise CircuitlabError(f"{where}: tracked {text!r} is not a single token for this model")
            tracked.append(text)
        clean_rows.append(clean)
        corrupt_rows.append(corrupted)
        answers.append(ids["answer"])
        wrongs.append(ids["wrong"])
        corrupted_answers.append(ids.get("corrupted_answer"))
    return assemble_pairs(
        tokenizer, pad_id, clean_rows, corrupt_rows, answers, wrongs, {}, [r["clean"] for r in records], [r["corrupted"] for r in records],
        track=tuple(dict.fromkeys(tracked)), corrupted_answer_tokens=None if None in corrupted_answers else corrupted_answers,
    )
