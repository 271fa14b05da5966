"""The data of index.html: one row per run dir under a results dir or a sweep dir (a thumbnail of its first
figure, its key number, status, method, model, overrides and time), grouped by the dir of runs they are in."""

from __future__ import annotations

from pathlib import Path

from circuitlab.headline import key_number
from circuitlab.report import files, inline
from circuitlab.report.page import key_view
from circuitlab.report.values import cell, is_number

STATUSES = ("done", "failed", "running")


def run_summary(run_dir: Path) -> dict:
    """One index row: experiment, method, model, overrides, key number, status, thumbnail."""
    run_dir = Path(run_dir)
    manifest = files.read_manifest(run_dir)
    config = files.read_config(run_dir, manifest)
    status = files.run_status(run_dir)
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


def row_view(row: dict, root: Path) -> dict:
    """An index row as the page shows it: links relative to the index, texts ready to show."""
    link = row["run_dir"].relative_to(root) if row["run_dir"] != root else Path(".")
    report = row["run_dir"] / files.REPORT_FILE
    return {"status": row["status"], "href": (link / files.REPORT_FILE).as_posix() if report.exists() else link.as_posix() + "/",
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
    counts = {s: sum(r["status"] == s for g in groups.values() for r in g) for s in STATUSES}
    sections = []
    for parent, rows in groups.items():
        relative = parent.relative_to(root) if parent != root and parent.is_relative_to(root) else None
        heading = (str(relative) if relative is not None else parent.name) if len(groups) > 1 or relative is not None else None
        sections.append({"heading": heading, "rows": [row_view(row, root) for row in rows]})
    heading = title or root.name or str(root)
    return {"title": f"circuitlab · {title or root.name}", "heading": heading, "root": str(root), "n_runs": len(runs),
            "counts": [(s, n) for s, n in counts.items() if n], "sections": sections}
