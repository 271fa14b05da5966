"""The run-dir reader: every file that `circuitlab figures`, `circuitlab report`, the index pages and the notebook API
read from a run dir is read here, checked, and named in one line when it cannot be used (`DamagedFile`, a
CircuitlabError): missing, not a file, too large, empty, not UTF-8, a CSV cut short or with a row of the wrong width,
fewer rows or other columns than the manifest records, JSON that does not parse or has the wrong shape, a tensor
file torch cannot read. What the run wrote is recorded for these checks by `records` (the manifest's
`file_records`). Also here: the walk over the run dirs under a results dir (each dir once, symlink loops not
followed) and `shown`, a path as printable text (file names that are not UTF-8 included). No torch at import.
"""

from __future__ import annotations

import csv
import io
import json
import os
import stat
from pathlib import Path

from circuitlab.errors import CircuitlabError

# the largest file read (a 7B model's edges.csv is about 100 MiB); a larger one is refused rather than read into memory
MAX_BYTES = {"csv": 256 << 20, "json": 64 << 20, "png": 64 << 20, "yaml": 1 << 20}
RUN_MARKERS = ("results.csv", "manifest.json", "run_config.json", ".hydra")
PNG_START, PNG_END = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"


class DamagedFile(CircuitlabError):
    """A run-dir file that cannot be used, in one line that names it."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = Path(path), why
        super().__init__(f"{shown(path)}: {why}")


def shown(path) -> str:
    """A path (or any text) as a page or a terminal can show it: bytes of a name that are not UTF-8 as \\xNN."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# --- bytes and text ---------------------------------------------------------------------------------------------

def read_bytes(path: Path, kind: str) -> bytes:
    """The file's bytes: refused when missing, not a plain file, larger than MAX_BYTES[kind] or empty."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise DamagedFile(path, "missing") from None
    except OSError as err:  # a symlink loop, no permission
        raise DamagedFile(path, f"cannot be read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise DamagedFile(path, "not a file")
    limit = MAX_BYTES.get(kind)
    if limit is not None and info.st_size > limit:
        raise DamagedFile(path, f"too large to read ({_size(info.st_size)}; the limit for a {kind} file is {_size(limit)})")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DamagedFile(path, f"cannot be read ({err.strerror or err})") from None
    if not data.strip():
        raise DamagedFile(path, "empty")
    return data


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n} bytes"


def read_text(path: Path, kind: str) -> str:
    data = read_bytes(path, kind)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DamagedFile(path, f"not UTF-8 text (byte {err.start}); damaged") from None


# --- JSON -------------------------------------------------------------------------------------------------------

def read_json(path: Path, shape=dict):
    """The file's JSON, checked against `shape` (see `shape_problem`). A bare NaN / Infinity (not strict JSON; written
    by circuitlab before its JSON was strict) reads as null: no number."""
    text = read_text(path, "json")
    try:
        value = json.loads(text, parse_constant=lambda name: None)
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"not JSON, or truncated (line {err.lineno}: {err.msg})") from None
    except RecursionError:
        raise DamagedFile(path, "nested too deeply to be one of circuitlab's records") from None
    problem = shape_problem(value, shape)
    if problem:
        raise DamagedFile(path, f"{problem} (damaged, or not written by circuitlab)")
    return value


NUMBER = (int, float, None)  # a number or null


def shape_problem(value, shape, where: str = "") -> str:
    """'' when `value` fits `shape`, else what does not. A shape is a type or a tuple of them (`None` for null;
    int and float never take a bool), a list `[item shape]`, or a dict of the fields checked when present
    (`"*"`: every other field; `"#"`: every field, each named by a whole number, as a position index)."""
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return _wrong(value, "an object", where)
        for key, item in value.items():
            if "#" in shape and not key.lstrip("-").isdigit():
                return f"{where or 'the top level'} has the key {key[:40]!r}, not a position index"
            inner = shape.get(key, shape.get("*", shape.get("#")))
            problem = shape_problem(item, inner, f"{where}.{key}" if where else key) if inner is not None else ""
            if problem:
                return problem
        return ""
    if isinstance(shape, list):
        if not isinstance(value, list):
            return _wrong(value, "a list", where)
        return next((p for i, item in enumerate(value) if (p := shape_problem(item, shape[0], f"{where}[{i}]"))), "")
    types = shape if isinstance(shape, tuple) else (shape,)
    if value is None and None in types or any(_is(value, t) for t in types if t is not None):
        return ""
    return _wrong(value, " or ".join(_NAMES.get(t, getattr(t, "__name__", str(t))) for t in types), where)


_NAMES = {dict: "an object", list: "a list", str: "text", int: "a whole number", float: "a number", None: "null", bool: "true or false"}


def _is(value, kind) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _wrong(value, expected: str, where: str) -> str:
    kinds = {dict: "an object", list: "a list", str: "text", bool: "true/false", int: "a number", float: "a number", type(None): "null"}
    return f"{where or 'the top level'} holds {kinds.get(type(value), type(value).__name__)}, not {expected}"


# --- CSV --------------------------------------------------------------------------------------------------------

def table_text(path: Path, record: dict | None = None, required: tuple[str, ...] = (), numbers: tuple[str, ...] = ()) -> str:
    """A CSV's text, refused when it is cut short (a last line without its newline, a row of another width than
    the header), lacks a `required` column, holds a cell that is not a number in a column of `numbers`, or, against
    the manifest's `record` ({rows, columns: {name: kind}}), holds another number of rows, other columns, or a cell
    that is not of its column's kind (number, integer, boolean)."""
    text = read_text(path, "csv")
    if not text.endswith("\n"):
        raise DamagedFile(path, "truncated (its last line is cut short)")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        missing = [c for c in required if c not in header]
        if missing:
            raise DamagedFile(path, f"lacks the columns {', '.join(missing)} (another layout, or written by an older circuitlab?)")
        kinds = _recorded_kinds(path, header, record)
        kinds += [(header.index(c), "number") for c in numbers if c in header and (header.index(c), "number") not in kinds]
        rows = 0
        for row in reader:
            rows += 1
            if len(row) != len(header):
                raise DamagedFile(path, f"line {reader.line_num} has {len(row)} fields, the header {len(header)} (truncated or damaged)")
            for index, kind in kinds:
                if not _fits(row[index], kind):
                    raise DamagedFile(path, f"line {reader.line_num} has {header[index]} {row[index][:40]!r}, not {KIND_TEXT[kind]} (damaged)")
    except csv.Error as err:
        raise DamagedFile(path, f"not a CSV file ({err})") from None
    if record is not None and isinstance(record.get("rows"), int) and rows != record["rows"]:
        raise DamagedFile(path, f"holds {rows} rows, the manifest records {record['rows']} (truncated, or changed since the run wrote it)")
    return text


KIND_TEXT = {"number": "a number", "integer": "a whole number", "boolean": "True or False"}


def _recorded_kinds(path: Path, header: list[str], record: dict | None) -> list[tuple[int, str]]:
    columns = (record or {}).get("columns")
    if not isinstance(columns, dict):
        return []
    if list(columns) != header:
        raise DamagedFile(path, f"its columns are {','.join(header)[:120]}, the manifest records {','.join(columns)[:120]} (damaged, or changed since the run wrote it)")
    return [(i, kind) for i, kind in enumerate(columns.values()) if kind in KIND_TEXT]


def _fits(text: str, kind: str) -> bool:
    if text == "":
        return True  # a missing value (NaN, <NA>): the reader reads it as none
    if kind == "boolean":
        return text in ("True", "False")
    try:
        int(text) if kind == "integer" else float(text)
    except ValueError:
        return False
    return True


def read_table(path: Path, record: dict | None = None, **read_csv):
    """The CSV as a DataFrame (`read_csv`: pandas' options), after `table_text`'s checks."""
    import pandas as pd

    return pd.read_csv(io.StringIO(table_text(path, record)), **read_csv)


def column_kind(series) -> str:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "integer"
    if pd.api.types.is_float_dtype(series.dtype):
        return "number"
    return "text"


def records(run_dir: Path, tables: dict, binary: list[str]) -> dict:
    """What the run wrote, for the readers' checks: each CSV's rows and columns (with their kinds), each binary
    file's size in bytes."""
    out = {name: {"rows": int(len(frame)), "columns": {str(c): column_kind(frame[c]) for c in frame.columns}} for name, frame in tables.items()}
    for name in binary:
        path = Path(run_dir) / name
        if path.is_file():
            out[name] = {"bytes": path.stat().st_size}
    return out


# --- the run's own files ----------------------------------------------------------------------------------------

MANIFEST, EXAMPLES = "manifest.json", "examples.json"
READ_ELSEWHERE = ("results.csv", MANIFEST, "run_config.json", "inputs.json", EXAMPLES, "index.csv")
_NAMED = {"name": str}
MANIFEST_SHAPE = {  # the fields the report, the index, index.csv and the notebook API read (others: any JSON)
    "experiment": str, "config": {"name": str, "method": _NAMED, "model": _NAMED, "task": _NAMED, "run": {"dir": (str, None)}},
    "model": dict, "device": str, "seed": (int, None), "n_prompt_pairs": int, "dropped_prompt_pairs": dict, "n_sweep_points": int,
    "shard": {"index": int, "num_shards": int}, "chunks": dict, "inputs": dict, "baselines": {"*": {"*": NUMBER}}, "templates": dict,
    "versions": {"*": str}, "git_commit": (str, None), "wall_time_seconds": {"*": NUMBER}, "files": [str], "overrides": [str],
    "file_records": {"*": {"rows": int, "bytes": int, "columns": {"*": str}}},
}
EXAMPLES_SHAPE = {
    "n_pairs": int, "prompt_names": [str], "roles": {"*": {"#": int}}, "differ": {"#": int},
    "pairs": [{"clean": [str], "corrupted": [str], "length": int, "positions": {"*": int}, "answers": {"*": str}, "clean_text": str,
               "corrupted_text": str}],
}


def read_manifest(run_dir: Path) -> dict:
    return read_json(Path(run_dir) / MANIFEST, MANIFEST_SHAPE)


def read_examples(run_dir: Path) -> dict | None:
    """examples.json (the prompt pairs token by token, the positions' roles); None when the run dir has none."""
    path = Path(run_dir) / EXAMPLES
    if not os.path.lexists(path):
        return None
    data = read_json(path, EXAMPLES_SHAPE)
    if "prompt_names" in data and len(data["prompt_names"]) != 2:
        raise DamagedFile(path, f"prompt_names holds {len(data['prompt_names'])} names, not 2 (damaged, or not written by circuitlab)")
    return data


def record_of(manifest: dict, name: str) -> dict | None:
    """What the manifest records of one file the run wrote (rows and columns, or bytes); None for older runs."""
    return (manifest.get("file_records") or {}).get(name)


def is_own(manifest: dict, name: str) -> bool:
    """Whether the run wrote the file: the manifest lists it (with no list, every file of the dir counts)."""
    listed = manifest.get("files")
    return not listed or name in listed


def check_run(run_dir: Path, required: tuple[str, ...] = (), numbers: tuple[str, ...] = (), need_manifest: bool = False) -> dict:
    """Every file of the run's own that its figures and report read, checked before anything is drawn or written:
    manifest.json (when there is one, or `need_manifest`), results.csv (with its `required` columns and `numbers`),
    each side-table CSV, examples.json and the method's JSON records. The first damaged one refuses the run in one
    line (DamagedFile). Returns the manifest ({} when there is none)."""
    run_dir = Path(run_dir)
    if not os.path.lexists(run_dir / "results.csv"):
        raise DamagedFile(run_dir / "results.csv", "missing")
    manifest = read_manifest(run_dir) if need_manifest or os.path.lexists(run_dir / MANIFEST) else {}
    table_text(run_dir / "results.csv", record_of(manifest, "results.csv"), required, numbers)
    names = {p.name for p in run_dir.glob("*.csv")} | {p.name for p in run_dir.glob("*.json")}
    names |= {n for n in manifest.get("files") or [] if "/" not in n and n.endswith((".csv", ".json"))}
    for name in sorted(n for n in names if n not in READ_ELSEWHERE and is_own(manifest, n)):
        if name.endswith(".csv"):
            table_text(run_dir / name, record_of(manifest, name))
        else:
            read_json(run_dir / name, (dict, list))
    if read_examples(run_dir) is None and EXAMPLES in (manifest.get("files") or []):
        raise DamagedFile(run_dir / EXAMPLES, "missing")
    return manifest


# --- tensors and figures ----------------------------------------------------------------------------------------

def read_tensors(path: Path, record: dict | None = None) -> dict:
    """A `.pt` file the run wrote (weights_only=True), refused in one line when it is missing, of another size than
    the manifest records, or not a tensor file torch can read."""
    path = Path(path)
    data = read_bytes(path, "pt")
    size = len(data)
    if record is not None and isinstance(record.get("bytes"), int) and size != record["bytes"]:
        raise DamagedFile(path, f"{size} bytes, the manifest records {record['bytes']} (truncated, or changed since the run wrote it)")
    import torch

    try:
        data = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  truncated, garbage or unsafe: whatever torch.load raises
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:100]
        raise DamagedFile(path, f"not a tensor file torch can read, or truncated ({type(err).__name__}: {first})") from None
    if not isinstance(data, dict):
        raise DamagedFile(path, f"holds a {type(data).__name__}, not the dict circuitlab writes (damaged)")
    return data


def png_bytes(path: Path) -> bytes:
    """A figure's PNG, refused when it is not a whole PNG (its first and last bytes) or too large."""
    data = read_bytes(path, "png")
    if not data.startswith(PNG_START):
        raise DamagedFile(path, "not a PNG image (damaged)")
    if not data.endswith(PNG_END):
        raise DamagedFile(path, "truncated (the PNG does not end)")
    return data


# --- where the runs are -----------------------------------------------------------------------------------------

def is_run_dir(path: Path) -> bool:
    return any(os.path.lexists(Path(path) / name) for name in RUN_MARKERS)


def run_dirs_under(root: Path) -> list[Path]:
    """Every run dir (or started Hydra job dir) at or under `root`, not descending into a run dir; each directory once
    (a symlink to a dir already seen, a loop included, is not followed again); numbered job dirs in numeric order."""
    root = Path(root)
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()

    def walk(directory: Path) -> None:
        try:
            info = directory.stat()
            if (info.st_dev, info.st_ino) in seen:
                return
            seen.add((info.st_dev, info.st_ino))
            if is_run_dir(directory):
                found.append(directory)
                return
            children = [p for p in directory.iterdir() if not p.name.startswith(".") and p.is_dir()]
        except OSError:  # unreadable, or a loop the stat itself reports: nothing to list there
            return
        for child in sorted(children, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)):
            walk(child)

    if root.is_dir():
        walk(root)
    return found


LOG_TAIL_BYTES = 64 << 10  # the end of a job's log searched for its error line


def run_status(run_dir: Path) -> str:
    """done (a manifest: written last; its files are checked when read), running (a process holds the dir's lock),
    else failed (started, never finished)."""
    from circuitlab import rundir

    run_dir = Path(run_dir)
    if (run_dir / "manifest.json").is_file():
        return "done"
    if rundir.holder(run_dir) is not None:
        return "running"
    return "failed"


JOBS_FILE = "slurm_jobs.json"  # a Slurm sweep's record of its jobs, beside their run dirs (slurm_launch writes it)
FAILURE_WORDS = ("error", "exception", "traceback", "cancelled", "killed", "interrupted", "terminated", "time limit", "oom")


def error_line(path: Path | None, tail_bytes: int = LOG_TAIL_BYTES) -> str:
    """The last error-looking line of a log file (its end only: a log can be long), or ''."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - tail_bytes))
            lines = [ln.strip() for ln in handle.read().decode("utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        low = line.lower()
        if "exited with exit code" in low or low.startswith("srun: force terminated"):  # srun's echo of what came before
            continue
        if any(word in low for word in FAILURE_WORDS):
            return line[:300]
    return ""


def scheduler_log(run_dir: Path) -> Path | None:
    """The scheduler's log of the Slurm job that ran `run_dir` (a job dir of a Slurm sweep: its record in the sweep's
    JOBS_FILE), or None."""
    try:
        record = json.loads((Path(run_dir).parent / JOBS_FILE).read_text()).get(Path(run_dir).name)
    except (OSError, ValueError, AttributeError):
        return None
    return Path(record["stderr"]) if isinstance(record, dict) and isinstance(record.get("stderr"), str) else None


def failure_line(run_dir: Path) -> str:
    """Why a run failed: the last error-looking line of the job's own log (Hydra writes one per job), else of the
    scheduler's log of its Slurm job (a job killed hard, e.g. at its time limit, writes nothing itself), or ''."""
    for path in sorted(Path(run_dir).glob("*.log")):
        if line := error_line(path):
            return line
    return error_line(scheduler_log(run_dir))
