"""report.html and index.html: every figure and table of the run dir is in the page with the CSV's numbers, the page
needs nothing outside itself and it is written without torch (test_report_browser.py opens it in Chromium,
test_report_escaping.py feeds it hostile values). The notebook API returns what the CLI writes."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import circuitlab
from circuitlab import cli, report
from circuitlab.methods import registry
from circuitlab.run import run_experiment
from tests.report_pages import SMALL, Page, read_page, same_number
from tests.torchless import run_without_torch


@pytest.fixture(scope="module")
def runs(report_runs) -> dict[str, Path]:
    """A finished run dir of every registered method (figures drawn, report written at the end of the run)."""
    return report_runs


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_the_report_holds_every_figure_and_table_with_the_csv_numbers(runs, method):
    run_dir = runs[method]
    page = read_page(run_dir / report.REPORT_FILE)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    # every figure, inline, byte for byte the PNG on disk
    pngs = sorted((run_dir / "figures").glob("*.png"))
    assert pngs, "each method's small run draws at least one figure"
    inline = {img["data-figure"]: img["src"] for img in page.images if img.get("data-figure")}
    assert set(inline) == {p.name for p in pngs}
    for png in pngs:
        assert inline[png.name] == "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    # nothing outside the page: no network or file resource, no script source; links are in-page or data
    assert all(link.startswith(("#", "data:")) for link in page.links), page.links
    # the main table: every location of results.csv, every value equal to the CSV row it names
    results = pd.read_csv(run_dir / "results.csv", keep_default_na=False, na_values=[""])
    rows = page.tables["table-results"]
    metrics = list(dict.fromkeys(results["metric"]))
    shown = [c for r in rows for c in r if "data-row" in c]
    assert len(rows) == min(report.MAX_ROWS, len(results.drop(columns=["metric", "value"]).drop_duplicates()))
    assert len(shown) == min(len(results), report.MAX_ROWS * len(metrics)) or len(rows) == report.MAX_ROWS
    for c in shown:
        assert same_number(c["data-v"], results["value"].iloc[int(c["data-row"])])
    # listed by |key metric|, largest first
    key = report.key_metric(circuitlab.load(run_dir).results, method)
    values = [abs(float(c["data-v"])) for r in rows for c in r if "data-row" in c and results["metric"].iloc[int(c["data-row"])] == key and c["data-v"]]
    assert values == sorted(values, reverse=True)
    # every side table, each row equal to the CSV row it names
    for csv in sorted(run_dir.glob("*.csv")):
        if csv.name == "results.csv":
            continue
        table = pd.read_csv(csv, keep_default_na=False, na_values=[""])
        shown_rows, ids = page.tables[f"table-{csv.stem}"], page.row_ids[f"table-{csv.stem}"]
        assert len(shown_rows) == min(report.MAX_ROWS, len(table))
        for cells, row_id in zip(shown_rows, ids):
            expected = table.iloc[int(row_id)]
            for c, (column, value) in zip(cells, expected.items()):
                if "data-v" in c:
                    assert same_number(c["data-v"], value), (csv.name, column)
                else:
                    assert c["text"] == ("" if pd.isna(value) else str(value)), (csv.name, column)
    # baselines, the command that reproduces the run, the manifest's timings and versions
    if not any(manifest["baselines"].values()):
        assert "no baselines recorded" in (run_dir / report.REPORT_FILE).read_text()
    for side, cells in zip(manifest["baselines"], page.tables.get("table-baselines", [])):
        assert cells[0]["text"] == side
        for value, c in zip(manifest["baselines"][side].values(), cells[1:]):
            assert same_number(c["data-v"], value)
    assert any(code.startswith("circuitlab run +experiment=") or code.startswith("circuitlab run method=") for code in page.code)
    html = (run_dir / report.REPORT_FILE).read_text()
    for name, version in manifest["versions"].items():
        assert f"<td>{name}</td><td>{version}</td>" in html
    for phase in manifest["wall_time_seconds"]:
        assert f"<td>{phase}</td>" in html


def test_the_report_shows_prompt_pairs_token_by_token(runs):
    run_dir = runs["activation_patching"]
    examples = json.loads((run_dir / report.EXAMPLES_FILE).read_text())
    html = (run_dir / report.REPORT_FILE).read_text()
    pair = examples["pairs"][0]
    assert set(pair["positions"]) >= {"IO", "S1", "S2", "END"}
    for label in pair["positions"]:
        assert f'<td class="mark">{label}</td>' in html
    changed = [i for i, (a, b) in enumerate(zip(pair["clean"], pair["corrupted"])) if a != b]
    assert changed == [pair["positions"]["S2"]]  # ABC corruption: only the second subject mention
    assert f'<td class="named diff">{pair["corrupted"][changed[0]]}</td>' in html


def test_reports_and_index_need_no_torch(runs, tmp_path):
    """`circuitlab report` in a process where torch cannot be imported: the same report, and an index."""
    root = tmp_path / "results"
    shutil.copytree(runs["activation_patching"], root / "ioi_patching" / "run")
    before = (root / "ioi_patching" / "run" / report.REPORT_FILE).read_text()
    (root / "ioi_patching" / "run" / report.REPORT_FILE).unlink()
    proc = run_without_torch(["report", str(root)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = re.compile(r"<tr><td>run dir</td><td>[^<]*</td></tr>")  # the one line that names the dir the report is in
    after = (root / "ioi_patching" / "run" / report.REPORT_FILE).read_text()
    assert where.sub("", after) == where.sub("", before) and str(root / "ioi_patching" / "run") in after
    assert (root / report.INDEX_FILE).is_file() and (root / "ioi_patching" / report.INDEX_FILE).is_file()


def test_the_index_of_a_sweep_has_a_row_per_run_and_shows_failed_jobs(runs, tmp_path):
    sweep = tmp_path / "multirun"
    for number, method in enumerate(["activation_patching", "path_patching"]):
        shutil.copytree(runs[method], sweep / str(number))
    failed = sweep / "2"  # a job that started (its config written) and never finished
    failed.mkdir()
    shutil.copy(runs["das"] / "run_config.json", failed / "run_config.json")
    (failed / ".hydra").mkdir()
    (failed / ".hydra" / "overrides.yaml").write_text("- +experiment=ioi_position\n- task.n_prompts=8\n")
    (failed / "hydra_app.log").write_text("[12:00:00] circuitlab: error: something broke here\n")
    cli.main(["report", str(sweep)])
    page = read_page(sweep / report.INDEX_FILE)
    [table] = [rows for name, rows in page.tables.items()]
    assert len(table) == 3
    status = [row[3]["text"] for row in table]
    assert status == ["done", "done", "failed"]
    assert "0/report.html" in page.links and "1/report.html" in page.links and "2/" in page.links
    assert "something broke here" in table[2][2]["text"]
    assert "+experiment=ioi_position task.n_prompts=8" in page.code
    for number, method in enumerate(["activation_patching", "path_patching"]):
        headline = report.key_number(circuitlab.load(sweep / str(number)).results, method)
        assert same_number(table[number][2]["data-v"], headline["value"])
        assert table[number][0].get("text") == ""  # the thumbnail cell holds an image only
    assert sum(1 for img in page.images if img["src"].startswith("data:image/png;base64,")) == 2


def test_a_multirun_keeps_its_index_html(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.main(["run", "-m", "+experiment=ioi_patching", "task.n_prompts=4,8", "sweep.layers=[1]", "progress=false", "figures=false",
              f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    page = read_page(tmp_path / "sweep" / report.INDEX_FILE)
    [rows] = page.tables.values()
    assert [r[3]["text"] for r in rows] == ["done", "done"] and {"0/report.html", "1/report.html"} <= set(page.links)
    assert [c.lower() for c in page.code if "task.n_prompts=" in c] == [  # (a multirun's overrides as Hydra's sweeper writes them)
        "+experiment=ioi_patching task.n_prompts=4 sweep.layers=[1] progress=false figures=false",
        "+experiment=ioi_patching task.n_prompts=8 sweep.layers=[1] progress=false figures=false"]


def test_report_refuses_a_dir_without_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["report", str(tmp_path)])
    assert exit_.value.code == 2 and "report: no runs under" in capsys.readouterr().err


def test_the_notebook_api_writes_what_the_cli_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["task.n_prompts=8", "sweep.layers=[1]", "progress=false"]
    cli.main(["run", "+experiment=ioi_patching", *overrides, f"run.dir={tmp_path / 'cli'}"])
    result = circuitlab.run("ioi_patching", *overrides, f"run.dir={tmp_path / 'api'}", model="toy-ioi")
    assert isinstance(result, circuitlab.Result) and result.run_dir == tmp_path / "api"
    assert (tmp_path / "api" / "results.csv").read_bytes() == (tmp_path / "cli" / "results.csv").read_bytes()
    assert set(result.figures) == {p.stem for p in (tmp_path / "api" / "figures").glob("*.png")}
    assert type(result.figures["patching_heatmap"]).__name__ == "ggplot"
    assert set(result.tensors) == set(circuitlab.load(tmp_path / "cli").tensors)
    assert result.manifest["overrides"][0] == "+experiment=ioi_patching"
    shown = Page(result._repr_html_())
    assert shown.images and "circuitlab.run('ioi_patching', 'task.n_prompts=8', 'sweep.layers=[1]', 'progress=false'" in "".join(shown.code)
    # load round-trips: the same object for the finished dir
    again = circuitlab.load(result.run_dir)
    pd.testing.assert_frame_equal(again.results, result.results)
    assert again.manifest == result.manifest and again.key_number == result.key_number
    # the default run dir is the CLI's: results/<name>/<timestamp>/ under the working directory
    assert circuitlab.run("ioi_patching", *overrides).run_dir.parent == tmp_path / "results" / "ioi_patching"


@pytest.mark.parametrize("arguments", [("ioi_patchin",), ("ioi_patching", "task.n_promts=3"), ("ioi_patching", "sweep.layers=[7]")])
def test_bad_notebook_input_raises_the_cli_line(arguments, capsys):
    with pytest.raises(circuitlab.CircuitlabError) as raised:
        circuitlab.run(*arguments)
    with pytest.raises(SystemExit):
        cli.main(["run", *(f"+experiment={a}" if i == 0 else a for i, a in enumerate(arguments))])
    assert capsys.readouterr().err.strip() == f"circuitlab: error: {raised.value}"


def test_load_refuses_what_is_not_a_finished_run(tmp_path):
    with pytest.raises(circuitlab.CircuitlabError, match="results.csv: missing"):
        circuitlab.load(tmp_path)
    with pytest.raises(circuitlab.CircuitlabError, match="not a directory"):
        circuitlab.load(tmp_path / "nothing")


def test_import_circuitlab_stays_light():
    proc = subprocess.run([sys.executable, "-c", "import sys, circuitlab; assert callable(circuitlab.run) and callable(circuitlab.load); "
                           "heavy = {'torch', 'transformer_lens', 'hydra', 'pandas', 'plotnine'} & set(sys.modules); assert not heavy, heavy"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --- figures a researcher can trust (drawn from the same small runs, as plotnine objects) ----------------------------

def geoms(plot) -> list[str]:
    return [type(layer.geom).__name__ for layer in plot.layers]


def test_no_cell_reads_minus_zero_and_unit_quantities_use_a_0_to_1_scale(runs):
    for method, run_dir in runs.items():
        for stem, plot in circuitlab.load(run_dir).figures.items():
            if plot.data is not None and "cell" in plot.data.columns:
                assert not plot.data["cell"].astype(str).str.fullmatch(r"-0(\.0+)?%?").any(), (method, stem)
    das = circuitlab.load(runs["das"]).figures
    for stem, plot in das.items():
        fills = [s for s in plot.scales if "fill" in s.aesthetics]
        if stem.startswith("iia"):
            assert fills and all(type(s).__name__ == "scale_fill_gradient" and tuple(s.limits) == (0, 1) for s in fills), stem


def test_attribution_vs_exact_says_its_slope_not_only_r(runs):
    plot = circuitlab.load(runs["attribution_patching"]).figures["attribution_vs_exact"]
    results = circuitlab.load(runs["attribution_patching"]).results
    for stream, panel in plot.data.groupby("stream")["panel"].first().items():
        both = plot.data[plot.data["stream"] == stream]
        slope = (both["value_exact"] * both["value_attribution"]).sum() / (both["value_exact"] ** 2).sum()
        assert f"slope = {slope:.2f}" in panel and "r = " in panel and "points away from 0" in panel
    assert geoms(plot).count("geom_abline") == 2 and set(results["stream"]) == set(plot.data["stream"])


def test_ablation_lines_are_named(runs):
    plot = circuitlab.load(runs["ablation"]).figures["ablation_scales"]
    [labels] = [layer._data for layer in plot.layers if type(layer.geom).__name__ == "geom_text"]
    named = " ".join(labels["text"])
    nodes = [str(n).removesuffix(" *") for n in plot.data["node"].unique()]
    assert all(n in named or "more" in named for n in nodes)
    assert {"in circuit", "not in circuit"} <= set(plot.data["circuit"])  # solid / dashed by membership


def test_iia_by_layer_ticks_whole_layers_and_merges_identical_streams(tmp_path):
    from circuitlab.methods.das.figures import iia_by_layer

    rows = [{"stream": s, "layer": l, "value": v, "position_label": "END"}
            for s, values in (("resid_pre", [0.0, 1.0]), ("resid_post", [0.0, 1.0]), ("mlp_out", [0.5, 0.0])) for l, v in enumerate(values)]
    plot, _, _ = iia_by_layer(pd.DataFrame(rows), "x")
    [x] = [s for s in plot.scales if "x" in s.aesthetics]
    assert list(x.breaks) == [0, 1]
    assert set(plot.data["streams"]) == {"resid_pre = resid_post", "mlp_out"} and "share one line" in plot.labels.subtitle


def test_titles_and_marks_say_what_was_done(runs, tmp_path):
    from circuitlab.methods.activation_patching.figures import activation_patching_figures
    from circuitlab.plotting import capture

    dla = circuitlab.load(runs["direct_attribution"]).figures
    assert "geom_col" in geoms(dla["layer_attribution"]) and "geom_line" not in geoms(dla["layer_attribution"])
    assert "geom_line" in geoms(circuitlab.load(runs["direct_attribution"]).figures.get("logit_lens", dla["layer_attribution"])) or "logit_lens" not in dla
    path = circuitlab.load(runs["path_patching"]).figures
    assert "restores the normal answer" in path["path_patching_heatmap"].labels.subtitle
    assert "mean over" in path["attention_patterns"].labels.title
    run_dir = tmp_path / "all_heads"
    run_experiment(cli.compose_config(["+experiment=ioi_heads", "sweep.heads=all", "task.n_prompts=8", "figures=false", *SMALL, f"run.dir={run_dir}"]), run_dir)
    with capture() as plots:
        activation_patching_figures(circuitlab.load(run_dir).results, run_dir / "figures")
    [title] = [p.labels.title for p in plots.values()]
    assert "head sets" in title and "each head" not in title


def test_the_report_says_the_templates_the_key_number_rule_and_position_roles(runs):
    """ioi_patching (templates: when, every position): the manifest and the report name the template; examples.json
    counts each named position's index over every pair; the key number is not a residual-stream cell and names its
    position's role and its rule."""
    from circuitlab.tasks import ioi

    run_dir = runs["activation_patching"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["templates"]["templates"] == {"when": ioi.TEMPLATES["when"]}
    page = "\n".join(read_page(run_dir / report.REPORT_FILE).shown)  # as a browser shows it, entities decoded
    assert ioi.TEMPLATES["when"] in page
    examples = json.loads((run_dir / report.EXAMPLES_FILE).read_text())
    assert all(sum(where.values()) == examples["n_pairs"] for where in examples["roles"].values())
    assert set(examples["differ"]) == {str(examples["pairs"][0]["positions"]["S2"])}  # abc: only S2 changes
    key = circuitlab.load(run_dir).key_number
    results = circuitlab.load(run_dir).results
    assert key["value"] is not None and "residual stream" in key["rule"] and key["rule"] in page
    quoted = results[(results["metric"] == key["metric"]) & (results["value"] == key["value"])]
    assert not quoted["stream"].isin(["resid_pre", "resid_mid", "resid_post"]).all()
    end = examples["pairs"][0]["positions"]["END"]
    assert f"position {end}" not in key["where"] or "END" in key["where"]  # an index position is named by its role
