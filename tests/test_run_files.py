"""Every file `circuitlab report`, `circuitlab figures` and the notebook API (`circuitlab.load`, a Result's tables,
tensors and display) read from a run dir, in each damaged form: missing, empty, truncated (mid-line, and cut at a line
so that only the manifest's record tells), of the wrong shape, not UTF-8, too large. Three checks each: one line naming
the file and exit 2 (the notebook: one ValueError line), or a warning and the section skipped where that is the
choice (a figure's PNG); nothing on disk changed outside what the command owns; no NaN or number shown that is not
one. Over a tree, a damaged run is listed as damaged and the others are written. The run dirs are the report tests'
(conftest.report_runs: one small run of every method, built once a session)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import circuitlab
from circuitlab import cli, runfiles
from circuitlab.storage import write_json
from tests.cli_refusal import refused


def digest(root: Path) -> dict[str, tuple]:
    """Every file, link and dir under `root` (not followed): bytes, size, mtime."""
    out = {}
    for directory, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            path = Path(directory) / name
            info = path.lstat()
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
            out[str(path.relative_to(root))] = (hashlib.sha256(data).hexdigest(), info.st_size, info.st_mtime_ns)
    return out




def cut_at_a_line(data: bytes) -> bytes:
    """The CSV without its last three rows: whole lines, so only the manifest's row count tells."""
    return b"".join(data.splitlines(keepends=True)[:-3])


def text_in_a_number(data: bytes) -> bytes:
    """A number of the first data row replaced by text (the row keeps its width)."""
    lines = data.splitlines(keepends=True)
    header, row = lines[0].decode().rstrip("\n").split(","), lines[1].decode().rstrip("\n").split(",")
    column = next(i for i, cell in enumerate(row) if cell.replace(".", "", 1).lstrip("-").isdigit() and header[i] not in ("layer", "head"))
    row[column] = "x1"
    return b"".join([lines[0], (",".join(row) + "\n").encode(), *lines[2:]])


def not_utf8(data: bytes) -> bytes:
    return data[:40] + b"\xff\xfe" + data[42:]


WRONG_SHAPE = {
    "manifest.json": lambda data: json.dumps({**json.loads(data), "baselines": [1, 2]}).encode(),
    "examples.json": lambda data: json.dumps({**json.loads(data), "pairs": [1]}).encode(),
    "circuit.json": lambda data: b"3\n",
    "results.pt": lambda data: torch_bytes([1, 2]),
}


def torch_bytes(value) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


# (file, damage) -> the words its one line holds; every form a file can take
TABLES = ("results.csv", "edges.csv", "faithfulness.csv")
RECORDS = ("manifest.json", "examples.json", "circuit.json")
CASES: dict[tuple[str, str], str] = {}
for name in TABLES:
    CASES.update({(name, "missing"): "missing", (name, "empty"): "empty", (name, "truncated"): "truncated", (name, "cut at a line"): "the manifest records",
                  (name, "wrong shape"): "'x1', not a", (name, "not UTF-8"): "not UTF-8", (name, "huge"): "too large"})
for name in RECORDS:
    CASES.update({(name, "missing"): "missing", (name, "empty"): "empty", (name, "truncated"): "not JSON, or truncated",
                  (name, "wrong shape"): "holds", (name, "not UTF-8"): "not UTF-8", (name, "huge"): "too large"})
DAMAGE = {"empty": lambda d: b"", "truncated": lambda d: d[: len(d) // 2], "cut at a line": cut_at_a_line, "not UTF-8": not_utf8}


def damage(run_dir: Path, name: str, form: str, monkeypatch) -> None:
    path = run_dir / name
    if form == "missing":
        path.unlink()
    elif form == "huge" and name.endswith(".pt"):  # no limit: a tensor file is as large as the run made it, and the manifest says how large
        path.write_bytes(path.read_bytes() + bytes(4096))
    elif form == "huge":  # above the limit for its kind (lowered to this run's largest such file), the others below it
        kind = name.rsplit(".", 1)[1]
        limit = max(p.stat().st_size for p in run_dir.rglob(f"*.{kind}"))
        monkeypatch.setitem(runfiles.MAX_BYTES, kind, limit)
        path.write_bytes(path.read_bytes() + b" " * (limit + 1 - path.stat().st_size))
    elif form == "wrong shape":
        path.write_bytes((WRONG_SHAPE.get(name) or text_in_a_number)(path.read_bytes()))
    else:
        path.write_bytes(DAMAGE[form](path.read_bytes()))


@pytest.fixture
def edge_run(report_runs, tmp_path) -> Path:
    """A copy of the eap run: results.csv, edges.csv, faithfulness.csv, circuit.json, examples.json, figures, .pt."""
    shutil.copytree(report_runs["eap"], tmp_path / "run")
    return tmp_path / "run"


@pytest.mark.parametrize("name, form", list(CASES), ids=[f"{n}-{f}" for n, f in CASES])
def test_a_damaged_file_refuses_report_figures_and_load_in_one_line(name, form, edge_run, capsys, monkeypatch):
    damage(edge_run, name, form, monkeypatch)
    before = digest(edge_run.parent)
    path = edge_run / name
    if name == "manifest.json" and form == "missing":  # a dir without a manifest is an unfinished run; figures draw from the CSVs alone
        assert refused(["report", str(edge_run)], capsys) == f"circuitlab: error: {edge_run}: not finished (manifest.json missing)"
    else:
        for command in ("report", "figures"):
            line = refused([command, str(edge_run)], capsys)
            assert line.startswith(f"circuitlab: error: {path}: ") and CASES[name, form] in line, (command, line)
    with pytest.raises(ValueError) as raised:
        circuitlab.load(edge_run)
    assert str(raised.value).startswith(f"{path}: ") and "\n" not in str(raised.value)
    assert digest(edge_run.parent) == before  # report.html, the figures, everything as it was


@pytest.mark.parametrize("name", ["results.pt", "dataset.pt"])
@pytest.mark.parametrize("form, words", [("missing", "missing"), ("empty", "empty"), ("truncated", "the manifest records"),
                                         ("wrong shape", "holds a list"), ("huge", "the manifest records")])
def test_a_damaged_tensor_file_is_one_line_when_the_notebook_reads_it(name, form, words, edge_run, monkeypatch):
    result = circuitlab.load(edge_run)  # the report and figures read no .pt: load checks them when they are read
    if form == "wrong shape":
        (edge_run / name).write_bytes(torch_bytes([1, 2]))
        manifest = json.loads((edge_run / "manifest.json").read_text())
        manifest["file_records"].pop(name)  # the size alone would tell: as a run from before the records
        (edge_run / "manifest.json").write_text(json.dumps(manifest))
        result = circuitlab.load(edge_run)
    else:
        damage(edge_run, name, form, monkeypatch)
    with pytest.raises(ValueError) as raised:
        result.tensors if name == "results.pt" else result.dataset
    assert str(raised.value).startswith(f"{edge_run / name}: ") and words in str(raised.value) and "\n" not in str(raised.value)


def test_a_pt_file_torch_cannot_read_is_named_without_a_record(edge_run):
    manifest = json.loads((edge_run / "manifest.json").read_text())
    del manifest["file_records"]
    (edge_run / "manifest.json").write_text(json.dumps(manifest))
    (edge_run / "results.pt").write_bytes((edge_run / "results.pt").read_bytes()[:3000])
    with pytest.raises(ValueError, match=r"results.pt: not a tensor file torch can read, or truncated \(RuntimeError"):
        circuitlab.load(edge_run).tensors


@pytest.mark.parametrize("form", ["empty", "truncated", "not a PNG", "huge"])
def test_a_damaged_figure_is_named_in_the_report_and_the_rest_written(form, edge_run, capsys, monkeypatch):
    png = edge_run / "figures" / "circuit.png"
    if form == "not a PNG":
        png.write_bytes(b"GIF89a" + png.read_bytes()[6:])
    else:
        damage(edge_run / "figures", "circuit.png", form, monkeypatch)
    before = digest(edge_run)
    cli.main(["report", str(edge_run)])
    out, err = capsys.readouterr()
    assert out.strip() == str(edge_run / "report.html")
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"circuitlab: warning: {png}: ") and "not shown in the report" in err
    page = (edge_run / "report.html").read_text()
    assert 'data-figure="circuit.png"' not in page and "figures/circuit.png: not shown:" in page and 'data-figure="faithfulness_curve.png"' in page
    assert {k for k, v in digest(edge_run).items() if before.get(k) != v} == {"report.html"}  # only what the command owns


def a_row_added(data: bytes) -> bytes:
    return data + b"," * data.splitlines()[0].count(b",") + b"\n"


@pytest.mark.parametrize("method, name, change", [("path_patching", "attention_patterns.csv", cut_at_a_line), ("das", "rotation_weights.csv", cut_at_a_line),
                                                  ("path_patching", "important_heads.csv", a_row_added)])
def test_every_methods_side_table_is_checked_against_the_manifest(method, name, change, report_runs, tmp_path, capsys):
    run_dir = tmp_path / method
    shutil.copytree(report_runs[method], run_dir)
    (run_dir / name).write_bytes(change((run_dir / name).read_bytes()))
    before = digest(run_dir)
    line = refused(["figures", str(run_dir)], capsys)
    assert line.startswith(f"circuitlab: error: {run_dir / name}: holds ") and "the manifest records" in line
    assert digest(run_dir) == before


def test_bare_nan_in_a_manifest_reads_as_no_number(edge_run, capsys):
    """A manifest from before strict JSON (bare NaN): accepted, the value shown as no number."""
    text = (edge_run / "manifest.json").read_text()
    manifest = json.loads(text)
    clean = manifest["baselines"]["clean"]["logit_diff"]
    (edge_run / "manifest.json").write_text(text.replace(json.dumps(clean), "NaN", 1))
    cli.main(["report", str(edge_run)])
    page = (edge_run / "report.html").read_text()
    baselines = page[page.index('id="table-baselines"'):]
    baselines = baselines[: baselines.index("</table>")]
    assert "nan" not in baselines.lower() and repr(clean) not in baselines and "<td>clean</td><td" in baselines
    assert circuitlab.load(edge_run).manifest["baselines"]["clean"]["logit_diff"] is None


def test_written_json_is_strict_with_the_reason_for_each_null(tmp_path):
    import numpy as np

    write_json(tmp_path / "x.json", {"a": float("nan"), "b": {"c": [1, np.float32("inf")]}, "n": np.int64(3), "ok": 0.5})

    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    data = json.loads((tmp_path / "x.json").read_text(), parse_constant=refuse)
    assert data == {"a": None, "b": {"c": [1, None]}, "n": 3, "ok": 0.5,
                    "null_reasons": {"a": "NaN: not a number", "b.c[1]": "inf: not a finite number"}}


def test_every_json_a_run_writes_is_strict_and_records_its_files(report_runs):
    def refuse(name):
        raise AssertionError(f"not strict JSON: {name}")

    for method, run_dir in report_runs.items():
        for path in run_dir.glob("*.json"):
            json.loads(path.read_text(), parse_constant=refuse)
        manifest = runfiles.check_run(run_dir, need_manifest=True)
        records = manifest["file_records"]
        for name in [n for n in manifest["files"] if n.endswith(".csv")]:
            assert records[name]["rows"] == len(pd.read_csv(run_dir / name)), (method, name)
        assert records["results.pt"]["bytes"] == (run_dir / "results.pt").stat().st_size
        assert {p.name for p in run_dir.glob("*.json")} <= set(manifest["files"]) | {"manifest.json"}, method


def test_a_tree_lists_damaged_runs_once_and_writes_the_others(report_runs, tmp_path, capsys):
    """One good run, one with edges.csv cut at a line, one with a manifest of the wrong shape under a name that is not
    UTF-8, and a symlink loop: the good run's report and the index are written, each damaged run is one warning and a
    'damaged' row naming its file, its report.html untouched; every run is listed once."""
    root = tmp_path / "results"
    shutil.copytree(report_runs["eap"], root / "good")
    shutil.copytree(report_runs["eap"], root / "cut")
    (root / "cut" / "edges.csv").write_bytes(cut_at_a_line((root / "cut" / "edges.csv").read_bytes()))
    odd = root / os.fsdecode(b"odd\xff")
    shutil.copytree(report_runs["eap_ig"], odd)
    (odd / "manifest.json").write_text(json.dumps({**json.loads((odd / "manifest.json").read_text()), "wall_time_seconds": "slow"}))
    (root / "loop").symlink_to(root, target_is_directory=True)
    damaged = {"cut": digest(root / "cut"), "odd": digest(odd)}
    cli.main(["report", str(root)])
    out, err = capsys.readouterr()
    warnings = err.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("circuitlab: warning: no report for ") for w in warnings), err
    assert any(f"{root / 'cut' / 'edges.csv'}: holds" in w for w in warnings) and any("odd\\xff/manifest.json: wall_time_seconds holds text" in w for w in warnings)
    assert sorted(out.split()) == sorted([str(root / "good" / "report.html"), str(root / "index.html")])
    assert digest(root / "cut") == damaged["cut"] and digest(odd) == damaged["odd"]
    index = (root / "index.html").read_text()
    assert index.count('data-status="damaged"') == 2 and index.count('data-status="done"') == 1 and "3 runs under" in index
    assert "odd%FF/" in index and "odd\\xff" in index and "edges.csv: holds" in index
    cli.main(["figures", str(root)])
    out, err = capsys.readouterr()
    assert len(err.strip().splitlines()) == 2 and str(root / "good" / "report.html") in out.split()
    assert digest(root / "cut") == damaged["cut"] and digest(odd) == damaged["odd"]


def test_the_notebook_names_a_damaged_file_in_one_line(edge_run):
    result = circuitlab.load(edge_run)
    (edge_run / "edges.csv").write_bytes(cut_at_a_line((edge_run / "edges.csv").read_bytes()))
    html = result._repr_html_()  # shown in the cell instead of a traceback
    assert "cannot be shown" in html and "edges.csv: holds" in html and "<table" not in html
    with pytest.raises(ValueError, match=r"edges.csv: holds \d+ rows, the manifest records \d+"):
        result.tables
    with pytest.raises(ValueError, match=r"edges.csv: holds"):
        result.figures
    assert "rows=" in repr(result)
    for bad in (123, ["ioi_patching"], b"ioi_patching"):
        with pytest.raises(ValueError, match="is not a preset name"):
            circuitlab.run(bad)
    with pytest.raises(ValueError, match="is not a path"):
        circuitlab.load(7)


def test_an_interrupted_multirun_lists_the_jobs_it_never_started(tmp_path, monkeypatch, capsys):
    """Ctrl-C in job 1 of 3: index.csv has job 0 done, job 1 failed, job 2 not started; counts stay integers."""
    import sys

    run_module = sys.modules["circuitlab.run"]  # the module (`circuitlab.run` is the notebook function)
    real = run_module.run_experiment

    def run_or_interrupt(cfg, run_dir, overrides=None):
        if cfg.seed == 1:
            raise KeyboardInterrupt
        return real(cfg, run_dir, overrides=overrides)

    monkeypatch.setattr(run_module, "run_experiment", run_or_interrupt)
    sweep = tmp_path / "sweep"
    with pytest.raises(SystemExit):
        cli.main(["run", "-m", "+experiment=ioi_patching", "task.n_prompts=4", "sweep.layers=[1]", "progress=false", "figures=false",
                  "seed=0,1,2", f"hydra.sweep.dir={sweep}"])
    capsys.readouterr()
    text = (sweep / "index.csv").read_text()
    index = pd.read_csv(sweep / "index.csv", dtype=str, keep_default_na=False)
    assert list(index["job"]) == ["0", "1", "2"] and list(index["status"]) == ["done", "failed", "not started"]
    assert index["overrides"][2].endswith("seed=2") and index["n_sweep_points"][0].isdigit() and index["shard"][0] == "0"
    assert ".0," not in text.split("\n", 1)[1].split(",/")[0]  # no integer written as a float
    page = (sweep / "index.html").read_text()  # the index page lists it too
    assert 'data-status="not started"' in page
    assert (sweep / "1" / "hydra_app.log").is_file()  # expanding the jobs inside job 0 left Hydra's job name as it was


def test_sweep_index_lists_a_damaged_job_with_its_reason(report_runs, tmp_path):
    from circuitlab.results import sweep_index

    shutil.copytree(report_runs["activation_patching"], tmp_path / "0")
    shutil.copytree(report_runs["activation_patching"], tmp_path / "1")
    (tmp_path / "1" / "manifest.json").write_text("[1, 2]\n")
    index = sweep_index(tmp_path, planned=[["seed=0"], ["seed=1"], ["seed=2"]])
    assert list(index["status"]) == ["done", "damaged", "not started"]
    assert "manifest.json: the top level holds a list, not an object" in index["problem"][1]
    assert str(index["n_sweep_points"].dtype) == "Int64" and pd.isna(index["n_sweep_points"][2])
