"""Figures from a run's results.csv alone (pandas + plotnine; no torch, no model): each method draws its own rows
(its registry record's `figures`); this module finds, checks and redraws runs."""

from __future__ import annotations

import warnings
from pathlib import Path


from circuitlab.methods import registry

def render_run(run_dir: Path) -> list[Path]:
    """(Re)draw every figure of one run directory from its results.csv (a CSV of another layout is skipped
    with a warning)."""
    from circuitlab.results import read_results, required_columns

    results = read_results(run_dir)
    missing = [c for c in required_columns() if c not in results.columns]
    if missing:
        warnings.warn(f"{run_dir}: results.csv lacks {', '.join(missing)} (written by an older circuitlab?); no figures drawn", stacklevel=2)
        return []
    written = []
    for method, frame in results.groupby("method", sort=False):
        draw = registry.METHODS[method].figures if method in registry.METHODS else None
        if draw is not None:
            written += draw(frame, Path(run_dir) / "figures")
    return written


def plots(run_dir: Path) -> dict:
    """Every figure of a run as a plotnine object (stem -> ggplot), drawn from its CSVs as `render_run` draws them,
    nothing written."""
    from circuitlab.plotting import capture

    with capture() as captured:
        render_run(run_dir)
    return captured


def check_readable(run_dir: Path) -> None:
    """Refuse, in one line naming the file, a run whose results.csv is missing, empty, not UTF-8, truncated (a last
    line cut short, a row with fewer or more fields than the header), of another layout, or holds a value that is not a
    number; or whose manifest.json, when there is one, is not a JSON object."""
    import csv
    import io
    import json

    from circuitlab.errors import CircuitlabError
    from circuitlab.results import required_columns

    path = Path(run_dir) / "results.csv"
    if not path.is_file():
        raise CircuitlabError(f"{path}: missing")
    data = path.read_bytes()
    if not data.strip():
        raise CircuitlabError(f"{path}: empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CircuitlabError(f"{path}: not UTF-8 text (byte {err.start}); damaged") from None
    if not text.endswith("\n"):
        raise CircuitlabError(f"{path}: truncated (its last line is cut short)")
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as err:
        raise CircuitlabError(f"{path}: not a CSV file ({err})") from None
    header = rows[0]
    missing = [c for c in required_columns() if c not in header]
    if missing:
        raise CircuitlabError(f"{path}: lacks the columns {', '.join(missing)} (another layout, or written by an older circuitlab?)")
    value = header.index("value")
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise CircuitlabError(f"{path}: line {number} has {len(row)} fields, the header {len(header)} (truncated or damaged)")
        try:
            float(row[value] or "nan")
        except ValueError:
            raise CircuitlabError(f"{path}: line {number} has value {row[value][:40]!r}, not a number (damaged)") from None
    manifest = Path(run_dir) / "manifest.json"
    if manifest.exists():
        try:
            parsed = json.loads(manifest.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CircuitlabError(f"{manifest}: damaged, empty or truncated ({type(err).__name__})") from None
        if not isinstance(parsed, dict):
            raise CircuitlabError(f"{manifest}: holds a JSON {type(parsed).__name__}, not an object (damaged)")


def redraw(run_dir: Path) -> list[Path]:
    """`render_run` for `circuitlab figures`: a run that cannot be read or drawn raises CircuitlabError in one line
    (the caller skips it and draws the others)."""
    from circuitlab.errors import CircuitlabError

    check_readable(run_dir)
    try:
        return render_run(run_dir)
    except Exception as err:  # noqa: BLE001  a damaged side table (attention_patterns.csv, ...) or data no figure fits
        message = (str(err).strip().splitlines() or [""])[0][:160]
        raise CircuitlabError(f"{run_dir}: cannot be drawn ({type(err).__name__}: {message})") from None
