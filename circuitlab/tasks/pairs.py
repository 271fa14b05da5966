"""Prompt pairs from a JSONL file: run your own data without writing Python.

One JSON object per line:
    {"clean": "When Mary and John went to the store, John gave a drink to",
     "corrupted": "When Mary and John went to the store, Anna gave a drink to",
     "answer": " Mary", "wrong": " John", "track": [" Anna"]}
`corrupted_answer` is optional: the corrupted prompt's own label, for `method.metrics=[output_change]` (given on
every line or none). `track` is optional; its tokens join `task.track` for `method.metrics=[prob]`. The clean and corrupted prompts
of a line must have the same number of tokens; answer, wrong and tracked strings must be one token each. A pair whose
prompts or answers hold a word the tokenizer does not know (its unknown token) is dropped and counted.
Named positions: END (each prompt's last token).
"""

from __future__ import annotations

from pathlib import Path

from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.tasks.base import (
    PromptPairs, Tokenizer, assemble_pairs, encode, json_type, read_json_lines, require_pairs, unknown_token_id,
)

TRACKS_OWN_TOKENS = True  # a line's "track" list joins task.track (method.metrics=[prob] needs no task.track)
REQUIRED = ("clean", "corrupted", "answer", "wrong")
OPTIONAL = ("corrupted_answer", "track")
UNKNOWN_LABEL = "an answer unknown to the tokenizer"


def validate_config(cfg) -> None:
    if not cfg.path:
        raise ConfigError("task.path", None, "a JSONL file of prompt pairs")
    if cfg.n_prompts < 1:
        raise ConfigError("task.n_prompts", cfg.n_prompts, "a positive integer")
    read_lines(Path(cfg.path).expanduser())


def read_lines(path: Path) -> list[dict]:
    """The file's records; a malformed line is reported by its number."""
    records = []
    for number, record in read_json_lines(path):
        where = f"task.path={path}: line {number}"
        if not isinstance(record, dict):
            raise CircuitlabError(f"{where} is not a JSON object (it is {json_type(record)}; one object per line with fields "
                                  f"{', '.join(REQUIRED)})")
        for key in REQUIRED:
            if key not in record:
                raise CircuitlabError(f"{where} lacks field {key!r} (required: {', '.join(REQUIRED)}; optional: {', '.join(OPTIONAL)})")
        for key in [*REQUIRED, "corrupted_answer"]:
            if key in record and not isinstance(record[key], str):
                raise CircuitlabError(f"{where}: {key!r} must be a string, not {json_type(record[key])}")
            if key in record and not record[key].strip():
                raise CircuitlabError(f"{where}: {key!r} is empty")
        track = record.get("track", [])
        if not isinstance(track, list) or not all(isinstance(t, str) and t.strip() for t in track):
            raise CircuitlabError(f"{where}: 'track' must be a list of non-empty strings")
        records.append({**record, "line": number})
    return records


def build_pairs(cfg, tokenizer: Tokenizer, prefix: list[int], pad_id: int, seed: int) -> PromptPairs:
    """The first `task.n_prompts` pairs of the file, tokenised (BOS first). A pair whose answer, wrong or corrupted
    answer is a word the tokenizer does not know (its unknown token) is dropped and counted, as are pairs whose
    prompts hold one (`assemble_pairs`)."""
    path = Path(cfg.path).expanduser()
    records = read_lines(path)[: cfg.n_prompts]
    unk = unknown_token_id(tokenizer)
    rows: dict[str, list] = {k: [] for k in ("clean", "corrupted", "answer", "wrong", "corrupted_answer", "clean_text", "corrupted_text")}
    tracked, dropped, example = [], {UNKNOWN_LABEL: 0}, None
    for record in records:
        where = f"task.path={path}: line {record['line']}"
        clean = prefix + encode(tokenizer, record["clean"])
        corrupted = prefix + encode(tokenizer, record["corrupted"])
        if len(clean) != len(corrupted):
            raise CircuitlabError(f"{where}: clean and corrupted prompts have {len(clean)} and {len(corrupted)} tokens; they must match")
        ids, unknown = {}, False
        for key in [k for k in ("answer", "wrong", "corrupted_answer") if k in record]:
            tokens = encode(tokenizer, record[key])
            if unk is not None and unk in tokens:
                unknown = True
            elif len(tokens) != 1:
                raise CircuitlabError(f"{where}: {key} {record[key]!r} is not a single token for this model ({len(tokens)} tokens)")
            ids[key] = tokens[0] if len(tokens) == 1 else None
        for text in record.get("track", []):
            tokens = encode(tokenizer, text)
            if len(tokens) != 1 or tokens[0] == unk:
                why = "a word this model's tokenizer does not know" if unk in tokens else "not a single token for this model"
                raise CircuitlabError(f"{where}: tracked {text!r} is {why}")
            tracked.append(text)
        if unknown:
            dropped[UNKNOWN_LABEL] += 1
            example = example or f"line {record['line']}"
            continue
        for key, value in (("clean", clean), ("corrupted", corrupted), ("answer", ids["answer"]), ("wrong", ids["wrong"]),
                           ("corrupted_answer", ids.get("corrupted_answer")), ("clean_text", record["clean"]), ("corrupted_text", record["corrupted"])):
            rows[key].append(value)
    if not rows["clean"] and dropped[UNKNOWN_LABEL]:
        source = getattr(tokenizer, "name_or_path", "") or "the model's tokenizer"
        raise CircuitlabError(f"task.path={path}: every pair has {UNKNOWN_LABEL} ({source}; {dropped[UNKNOWN_LABEL]} of {len(records)}, "
                              f"e.g. {example}): use a model whose vocabulary has the file's words")
    require_pairs(len(rows["clean"]), dropped)
    labels = rows["corrupted_answer"]
    return assemble_pairs(
        tokenizer, pad_id, rows["clean"], rows["corrupted"], rows["answer"], rows["wrong"], {}, rows["clean_text"], rows["corrupted_text"],
        dropped, prefix=prefix, track=tuple(dict.fromkeys(tracked)), corrupted_answer_tokens=None if None in labels else labels,
    )
