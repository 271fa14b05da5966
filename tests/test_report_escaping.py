"""Autoescaping: a value from a run dir that holds HTML (`<script>`, a `"` that would close an attribute, a bare `&`)
is shown as text in every place a report or an index shows user data (a task's text, a token, a config value, a CSV
cell or column, a file or dir name, a manifest entry), never as markup. test_report_browser.py opens the same pages in
Chromium and checks that nothing ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from circuitlab import report
from tests.report_pages import Page

HOSTILE = '<script>pwned=1</script>"{}"&<i>'  # `{}`: the place, so that each place is checked on its own
NAME = 'x"&<i>{}'  # a file or dir name (no slash)


def hostile(place: str) -> str:
    return HOSTILE.format(place)


def as_json(text: str) -> str:
    """`text` as it reads inside a JSON string (a quote escaped)."""
    return json.dumps(text)[1:-1]


def hostile_run(source: Path, run_dir: Path) -> list[str]:
    """A copy of ioi_patching's small run (`source`) with a hostile value in every place its report shows user data;
    returns the texts the page must show, each once at least, as written."""
    shutil.copytree(source, run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    config = manifest["config"]
    config["model"]["name"], config["task"]["name"] = hostile("config model"), hostile("task")
    config["task"]["note"] = hostile("config value")
    manifest.update(
        experiment=hostile("experiment"), device=hostile("device"),  # counts and the seed stay numbers: text there is a damaged manifest
        model={"model_name": hostile("model"), hostile("model key"): hostile("model value")},
        templates={"templates": {hostile("template name"): hostile("template")}, "train_templates": {"t": hostile("training template")},
                   "note": hostile("templates note")},
        dropped_prompt_pairs={hostile("dropped"): 2}, inputs={hostile("input"): {"sha256": hostile("digest")}},
        baselines={hostile("baseline side"): {hostile("baseline metric"): 1.5}},
        overrides=[*manifest["overrides"], f"+task.note={hostile('override')}"],
        wall_time_seconds={hostile("phase"): 1.0}, versions={hostile("package"): hostile("version")}, git_commit=hostile("commit"),
        **{hostile("entry key"): hostile("entry")},
    )
    manifest.pop("file_records", None)  # the CSVs are changed below: as a run from before the manifest recorded them
    figure = sorted((run_dir / "figures").glob("*.png"))[0]
    figure.rename(figure.with_name(NAME.format("figure") + ".png"))
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    (run_dir / "run_config.json").write_text(json.dumps(config))
    results = pd.read_csv(run_dir / "results.csv", keep_default_na=False, na_values=[""])
    results["experiment"] = hostile("experiment column")
    results["metric"] = results["metric"].replace("logit_diff_normalized", hostile("metric") + "_normalized")
    results[hostile("column")] = hostile("cell")
    results.loc[results["value"].abs().idxmin(), hostile("column")] = "plain"  # varying: the key number says where it is
    results.to_csv(run_dir / "results.csv", index=False)
    pd.DataFrame({"score": [0.5, -2.0], hostile("side column"): [hostile("side cell"), "plain"]}).to_csv(run_dir / (NAME.format("side") + ".csv"), index=False)
    (run_dir / (NAME.format("record") + ".json")).write_text('{"note": "' + hostile("record") + '"}')
    examples = json.loads((run_dir / report.EXAMPLES_FILE).read_text())
    pair = examples["pairs"][0]
    pair["clean"][1] = pair["corrupted"][1] = hostile("token")
    pair["positions"][hostile("label")] = 3
    pair["answers"] = {hostile("answer name"): hostile("answer")}
    examples.update(prompt_names=[hostile("prompt name"), "corrupted"])
    (run_dir / report.EXAMPLES_FILE).write_text(json.dumps(examples))
    places = ["experiment", "device", "model", "config model", "task", "template name", "template", "training template",
              "templates note", "dropped", "baseline side", "baseline metric", "override", "phase", "package", "version", "commit",
              "entry key", "entry", "experiment column", "metric", "column", "cell", "side column", "side cell", "record", "token", "label",
              "answer name", "answer", "prompt name", "config value"]
    return ([hostile(p) for p in places] + [f"{hostile('model key')} {hostile('model value')}", as_json(hostile("input")), as_json(hostile("digest"))]
            + [NAME.format(n) for n in ("figure", "side", "record", "run")])


def hostile_sweep(source: Path, root: Path) -> tuple[Path, list[str]]:
    """A sweep dir with a hostile name: job 0 the hostile run, job 1 a job that failed with a hostile log line and
    overrides. Returns (the sweep dir, what its index must show)."""
    sweep = root / NAME.format("sweep")
    hostile_run(source, sweep / "0")
    failed = sweep / "1"
    failed.mkdir()
    (failed / "run_config.json").write_text(json.dumps({"name": hostile("failed experiment"), "model": {"name": hostile("failed model")}}))
    (failed / ".hydra").mkdir()
    (failed / ".hydra" / "overrides.yaml").write_text(json.dumps([hostile("failed override")]))
    (failed / "hydra_app.log").write_text(f"circuitlab: error: {hostile('log line')}\n")
    places = ["experiment", "config model", "metric", "cell", "failed experiment", "failed model", "failed override", "log line", "index title"]
    return sweep, [hostile(p) for p in places] + [NAME.format("sweep")]


def assert_escaped(html: str, expected: list[str]) -> None:
    """No hostile markup in the page (its only script is the report's own), every expected text shown as written."""
    assert html.count("<script") == 1 and "pwned" not in Page(html).scripts[0]
    assert "<i>" not in html and "&<" not in html
    shown = "\n".join(Page(html).shown)
    missing = [text for text in expected if text not in shown]
    assert not missing, missing


def test_hostile_values_are_shown_as_text_in_the_report_and_the_index(report_runs, tmp_path):
    run_dir = tmp_path / NAME.format("run")
    expected = hostile_run(report_runs["activation_patching"], run_dir)
    page = report.report_html(run_dir)
    assert_escaped(page, expected)
    assert_escaped(report.fragment(run_dir), expected)
    sweep, shown = hostile_sweep(report_runs["activation_patching"], tmp_path)
    assert_escaped(report.index_html(sweep, hostile("index title")), shown)
