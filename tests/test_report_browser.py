"""Every method's report, a sweep's index and a report full of hostile values, opened in headless Chromium from
file:// (Playwright on the system Chromium, tests/browser.py): no console error, uncaught exception or failed load,
no request outside the file itself, every figure decoded, the tables sort, and no hostile value ran as a script or
became an element."""

from __future__ import annotations

import shutil

import pytest

from circuitlab import report
from tests import browser
from tests.test_report_escaping import hostile, hostile_run, hostile_sweep

SKIP = browser.skip_reason()
SORTS = """(() => { const t = document.getElementById('table-results'); const heads = t.tHead.rows[0].cells;
    const last = heads[heads.length - 1]; last.click();
    const values = Array.from(t.tBodies[0].rows).map(r => r.cells[heads.length - 1].getAttribute('data-v')).filter(v => v !== '').map(Number);
    return values.every((v, i) => i === 0 || values[i - 1] <= v) && last.getAttribute('data-dir') === 'asc'; })()"""
NOTHING_RAN = "typeof pwned === 'undefined' && document.querySelectorAll('i').length === 0 && document.scripts.length === 1"


@pytest.mark.skipif(SKIP is not None, reason=f"the reports' browser test needs Chromium and playwright: {SKIP}")
def test_reports_open_in_headless_chromium(report_runs, tmp_path):
    sweep = tmp_path / "multirun"
    for number, run_dir in enumerate(report_runs.values()):
        shutil.copytree(run_dir, sweep / str(number))
    report.write_index(sweep)
    hostile_dir = tmp_path / "hostile" / "run"
    hostile_run(report_runs["activation_patching"], hostile_dir)
    report.write_report(hostile_dir)
    hostile_index, _ = hostile_sweep(report_runs["activation_patching"], tmp_path / "hostile_sweep")
    report.write_index(hostile_index, hostile("index title"))
    pages = [*((method, run_dir / report.REPORT_FILE, SORTS) for method, run_dir in report_runs.items()), ("index", sweep / report.INDEX_FILE, None),
             ("hostile report", hostile_dir / report.REPORT_FILE, NOTHING_RAN), ("hostile index", hostile_index / report.INDEX_FILE, NOTHING_RAN)]
    with browser.Browser() as chromium:
        for name, page, script in pages:
            seen = chromium.open(page.as_uri(), screenshot=tmp_path / f"{name}.png", script=script)
            assert not seen["errors"], (name, seen["errors"])
            assert seen["images"] and all(width > 0 for _, width in seen["images"]), (name, seen["images"])
            assert all(url.startswith(("file:", "data:")) for url in seen["requests"]), (name, seen["requests"])
            assert script is None or seen["value"] is True, name
            assert seen["screenshot"].stat().st_size > 20_000  # a rendered page, not a blank one
