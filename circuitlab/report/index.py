"""The data of index.html: one row per run dir under a results dir or a sweep dir (a thumbnail of its first
figure, its key number, status, method, model, overrides and time), grouped by the dir of runs they are in."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from circuitlab.errors import CircuitlabError
from circuitlab.headline import key_number
from circuitlab.report import files, inline
from circuitlab.report.page import key_view
from circuitlab.report.values import cell, is_number

STATUSES = ("done", "damaged", "failed", "running", "not started")


def run_summary(run_dir: Path) -> dict:
    """One index row: experiment, method, model, overrides, key number, status, thumbnail; a run with a damaged
    file is listed as damaged, with the one line that names the file."""
    from circuitlab.figures import check_readable

    run_dir = Path(run_dir)
    status = files.run_status(run_dir)
    try:
        manifest = check_readable(run_dir) if status == "done" else files.read_manifest(run_dir)
        config = files.read_config(run_dir, manifest)
    except CircuitlabError as err:
        return {"run_dir": run_dir, "status": "damaged", "experiment": "", "method": "", "model": "", "overrides": files.overrides_of(run_dir, {}),
                "key": None, "seconds": None, "thumbnail": None, "problem": str(err)}
    row = {"run_dir": run_dir, "status": status, "experiment": manifest.get("experiment") or config.get("name") or "",
           "method": (config.get("method") or {}).get("name", ""), "model": (config.get("model") or {}).get("name", ""),
           "overrides": files.overrides_of(run_dir, manifest), "key": None, "seconds": None, "thumbnail": None, "problem": ""}
    if status == "done":
        results, problem = files.read_results_safely(run_dir)
        row["problem"] = problem
        if results is not None and len(results):
            row["key"] = key_number(results, row["method"] or None, run_dir)
        timings = manifest.get("wall_time_seconds") or {}
        row["seconds"] = sum(v for v in timings.values() if is_number(v)) if timings else None
        pngs = files.figure_files(run_dir, manifest)
        row["thumbnail"] = inline.thumbnail_uri(pngs[0]) if pngs else None
    elif status == "failed":
        row["problem"] = files.failure_line(run_dir) or "started, never finished (no manifest.json)"
    return row


def not_started(sweep_dir: Path, listed: set[str]) -> list[dict]:
    """Rows of the jobs index.csv lists as not started (a multirun stopped before them), where no job dir is."""
    from circuitlab.results import read_sweep_index

    index = read_sweep_index(sweep_dir)
    if index is None:
        return []
    waiting = index[(index["status"] == "not started") & ~index["job"].astype(str).isin(listed)]
    return [{"run_dir": Path(sweep_dir) / str(job), "status": "not started", "experiment": "", "method": "", "model": "",
             "overrides": str(overrides).split(), "key": None, "seconds": None, "thumbnail": None,
             "problem": "not started (the multirun stopped before this job)"} for job, overrides in zip(waiting["job"], waiting["overrides"].fillna(""))]


def row_view(row: dict, root: Path) -> dict:
    """An index row as the page shows it: links relative to the index (a name's bytes %-escaped, so that a name that
    is not UTF-8 still links), texts ready to show."""
    link = row["run_dir"].relative_to(root) if row["run_dir"] != root else Path(".")
    report = row["run_dir"] / files.REPORT_FILE
    href = (link / files.REPORT_FILE).as_posix() if report.exists() and row["status"] != "not started" else link.as_posix() + "/"
    return {"status": row["status"], "href": quote(os.fsencode(href)),
            "link": link.as_posix(), "thumbnail": row["thumbnail"], "experiment": str(row["experiment"]), "key": key_view(row["key"]),
            "problem": str(row["problem"]), "method": str(row["method"]), "model": str(row["model"]),
            "overrides": " ".join(row["overrides"]) if row["overrides"] is not None else "(not recorded)", "seconds": cell(row["seconds"])}


def index_data(root: Path, title: str | None = None) -> dict:
    """Everything index.html shows of the runs under `root`."""
    root = Path(root)
    runs = files.run_dirs_under(root)
    groups: dict[Path, list[dict]] = {}
    for run_dir in runs:
        groups.setdefault(run_dir.parent, []).append(run_summary(run_dir))
    for parent, rows in groups.items():  # a multirun's jobs that never started: its index.csv lists them
        rows += not_started(parent, {row["run_dir"].name for row in rows})
    counts = {s: sum(r["status"] == s for g in groups.values() for r in g) for s in STATUSES}
    sections = []
    for parent, rows in groups.items():
        relative = parent.relative_to(root) if parent != root and parent.is_relative_to(root) else None
        heading = (str(relative) if relative is not None else parent.name) if len(groups) > 1 or relative is not None else None
        sections.append({"heading": heading, "rows": [row_view(row, root) for row in rows]})
    heading = title or root.name or str(root)
    return {"title": f"circuitlab · {title or root.name}", "heading": heading, "root": str(root), "n_runs": sum(len(rows) for rows in groups.values()),
            "counts": [(s, n) for s, n in counts.items() if n], "sections": sections}
