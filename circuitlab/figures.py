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

    check_readable(run_dir)
    with capture() as captured:
        render_run(run_dir)
    return captured


def check_readable(run_dir: Path, need_manifest: bool = False) -> dict:
    """Refuse, in one line naming the file (runfiles.DamagedFile), a run whose results.csv, manifest.json (when there
    is one, or `need_manifest`), side-table CSVs, examples.json or JSON records are missing, empty, too large, not
    UTF-8, truncated, of the wrong shape or another layout, or hold a value that is not a number; returns the
    manifest ({} when there is none)."""
    from circuitlab import runfiles
    from circuitlab.results import required_columns

    return runfiles.check_run(Path(run_dir), tuple(required_columns()), ("value",), need_manifest)


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
