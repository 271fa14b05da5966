"""Methods are plugins: one registry record each, its YAML, and nothing else to edit; figures need no torch."""

from __future__ import annotations


import pytest

from circuitlab import cli
from circuitlab.methods import registry
from circuitlab.plan import prepare
from circuitlab.run import run_experiment
from circuitlab.results import csv_columns
from tests.torchless import run_without_torch

QUIET = ["progress=false", "figures=false", "task.n_prompts=8"]
# a task (and model) each method can plan with, offline
METHOD_SETTINGS = {"das": ["task=ioi_counterfactual", "sweep=named_positions"], "path_patching": ["sweep=senders"], "ablation": ["sweep=senders"]}
TASK_SETTINGS = {"factual": ["model=toy-facts", "sweep=named_positions", "sweep.positions=[COUNTRY,END]"], "addition": ["model=toy-addition"], "repeat_first": ["model=known-circuit"],
                 "ioi_counterfactual": ["sweep=named_positions"]}


def test_every_method_yaml_is_a_registered_method_and_back():
    assert set(cli.group_options("method")) == set(registry.METHODS)
    for name, method in registry.METHODS.items():
        assert method.name == name and method.hooks.run and method.hooks.validate and method.hooks.plan


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.METHODS["ablation"])


def test_csv_columns_come_from_the_methods():
    columns = csv_columns()
    assert columns[-2:] == ["metric", "value"] and ["receiver", "scale", "in_circuit"] == [c for c in columns if c in ("receiver", "scale", "in_circuit")]


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_every_method_option_plans(method):
    plan = prepare(cli.compose_config([f"method={method}", *METHOD_SETTINGS.get(method, []), *QUIET]))
    assert plan.pairs.n_pairs > 0 and (plan.locations if registry.get(method).sweeps else plan.locations == [])  # False: it reads the whole model


@pytest.mark.parametrize("task", [t for t in cli.group_options("task") if t != "pairs"])
def test_every_task_option_plans(task):
    plan = prepare(cli.compose_config([f"task={task}", *TASK_SETTINGS.get(task, []), *QUIET]))
    assert plan.pairs.n_pairs > 0 and plan.locations


@pytest.mark.parametrize("sweep", cli.group_options("sweep"))
def test_every_sweep_option_plans(sweep):
    assert prepare(cli.compose_config([f"sweep={sweep}", *QUIET])).locations


def test_figures_work_where_torch_cannot_be_imported(tmp_path):
    run_experiment(cli.compose_config(["+experiment=ioi_heads", "progress=false", "figures=false", "task.n_prompts=8"]), tmp_path / "run")
    proc = run_without_torch(["figures", str(tmp_path / "run")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "figures").is_dir() and any((tmp_path / "run" / "figures").glob("*.png"))


def test_a_cli_run_plans_once(tmp_path, monkeypatch):
    """The pre-flight plan is the run's plan: prompts and sweep points are built once per `circuitlab run`."""
    from circuitlab import plan as planning

    calls = []
    real = planning.prepare
    monkeypatch.setattr(planning, "prepare", lambda cfg: calls.append(1) or real(cfg))
    monkeypatch.setattr(planning, "PREPARED", {})
    monkeypatch.chdir(tmp_path)
    cli.main(["run", "+experiment=ioi_patching", "task.n_prompts=8", "sweep.layers=[0]", "progress=false", "figures=false", f"run.dir={tmp_path / 'run'}"])
    assert len(calls) == 1 and (tmp_path / "run" / "results.csv").is_file()


def test_read_results_takes_each_methods_column_dtypes_from_its_record(tmp_path, monkeypatch):
    """A method's own columns are read as its registry record declares them (a method registered here, that no code
    outside the registry knows of); a run written before they existed gets them, empty, with the same dtypes."""
    import pandas as pd

    from circuitlab.results import csv_columns, read_results

    extra = registry.Method("made_up", registry.METHODS["eap"].schema, "circuitlab.methods.eap.method",
                            columns=(registry.Column("weight", "float64"), registry.Column("kept", "boolean"), registry.Column("note")))
    monkeypatch.setitem(registry.METHODS, extra.name, extra)
    assert csv_columns()[-5:] == ["weight", "kept", "note", "metric", "value"]
    row = {"experiment": "x", "method": "made_up", "stream": "z", "layer": 1, "head": "", "metric": "m", "value": "0.5"}
    rows = [{**row, "weight": "2.5", "kept": "True", "note": "a"}, {**row, "weight": "", "kept": "", "note": ""}]
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    frame = read_results(tmp_path)
    assert {c: str(frame[c].dtype) for c in ("weight", "kept", "note")} == {"weight": "float64", "kept": "boolean", "note": "string"}
    assert frame["weight"].iloc[0] == 2.5 and pd.isna(frame["weight"].iloc[1])
    assert bool(frame["kept"].iloc[0]) and frame["kept"].isna().iloc[1] and list(frame["note"]) == ["a", ""]
    (tmp_path / "old").mkdir()
    pd.DataFrame([row]).to_csv(tmp_path / "old" / "results.csv", index=False)
    old = read_results(tmp_path / "old")
    assert list(old.columns) == csv_columns()
    expected = {"weight": "float64", "kept": "boolean", "note": "string", "scale": "float64", "in_circuit": "boolean", "receiver": "string"}
    assert {c: str(old[c].dtype) for c in expected} == expected


def test_shipped_methods_declare_their_column_dtypes():
    from circuitlab.results import method_columns

    assert method_columns() == {"receiver": "string", "scale": "float64", "in_circuit": "boolean", "sender": "string", "control": "string",
                                "hypothesis": "string"}
    assert registry.variant_columns() == ["control", "hypothesis"]  # DAS's controls and hypotheses: beside the result, never its key number
    with pytest.raises(ValueError, match="dtype 'int' is not one of string, float64, boolean"):
        registry.Column("count", "int")
