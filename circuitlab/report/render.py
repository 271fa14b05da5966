"""report.html and index.html rendered from their data (page.py, index.py) by the Jinja2 templates in templates/,
with autoescaping on: every value from a run dir (a task's text, a token, a config value, a CSV cell) is escaped.

Self-contained: every figure is a PNG inlined as a data URI, every CSV a download link of its own, and the one
script (sorting tables; `<details>` collapse without it) is inline, so a report opens from `file://`, needs no network
and can be mailed."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import jinja2
from markupsafe import Markup

from circuitlab.report import files
from circuitlab.report.index import index_data
from circuitlab.report.page import report_data
from circuitlab.runfiles import shown

log = logging.getLogger("circuitlab")


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("circuitlab.report", "templates"), autoescape=True, finalize=printable,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def printable(value):
    """Every value a page shows: a text holding bytes that are not UTF-8 (a file name's) with those bytes as \\xNN."""
    return value if isinstance(value, Markup) or not isinstance(value, str) else shown(value)


@functools.cache
def asset(name: str) -> Markup:
    """The style sheet or the script, as written in templates/ (inlined into every page, never escaped)."""
    source, _, _ = environment().loader.get_source(environment(), name)
    return Markup(source)


def render(template: str, body: str, page: dict) -> str:
    return environment().get_template(template).render(page=page, body=body, style=asset("report.css"), script=asset("sort_tables.js")) + "\n"


def report_html(run_dir: Path) -> str:
    return render("page.html", "report_body.html", report_data(run_dir))


def fragment(run_dir: Path) -> str:
    """The report for a notebook cell (`_repr_html_`): its style, body and script, no document around them."""
    return render("fragment.html", "report_body.html", report_data(run_dir))


def write_report(run_dir: Path) -> Path:
    from circuitlab.results import write_text

    path = Path(run_dir) / files.REPORT_FILE
    write_text(path, report_html(run_dir))
    return path


def index_html(root: Path, title: str | None = None) -> str:
    return render("page.html", "index_body.html", index_data(root, title))


def write_index(root: Path, title: str | None = None) -> Path:
    from circuitlab.results import write_text

    path = Path(root) / files.INDEX_FILE
    write_text(path, index_html(root, title))
    return path


def write_index_quietly(root: Path) -> Path | None:
    """`write_index` for the end of a multirun job: a failure is one warning, never the job's error."""
    try:
        return write_index(root)
    except Exception as err:  # noqa: BLE001
        log.warning("%s not written (%s: %s); `circuitlab report %s` retries", Path(root) / files.INDEX_FILE, type(err).__name__, err, root)
        return None


def write_reports(roots: list[Path], title: str | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """`circuitlab report`: report.html in every run dir under `roots` that finished, index.html in each dir of runs
    and in each root. Returns (written files, [(run dir, why it was skipped)])."""
    from circuitlab.errors import CircuitlabError

    written, skipped = [], []
    for root in roots:
        for run_dir in files.run_dirs_under(root):
            status = files.run_status(run_dir)
            if status != "done":
                missing = " and ".join(n for n in ("manifest.json", "results.csv") if not (run_dir / n).is_file())
                skipped.append((run_dir, "still running" if status == "running" else f"not finished ({missing} missing)"))
                continue
            try:  # a run with a damaged file of its own: one line, its report.html left as it was
                written.append(write_report(run_dir))
            except CircuitlabError as err:
                skipped.append((run_dir, str(err)))
        for directory in files.sweep_dirs(root):
            if directory.is_relative_to(Path(root)) and directory != Path(root) and not files.is_run_dir(directory):
                written.append(write_index(directory))
        if not files.is_run_dir(Path(root)):
            written.append(write_index(Path(root), title))
    return written, skipped
