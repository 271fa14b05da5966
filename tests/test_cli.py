"""The CLI's shape: every subcommand answers --help, argparse's errors are one line (exit 2), train-toy's values are
checked before training, `list methods` reads the registry, and cli / compose / hydra_app / multirun import no circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from circuitlab import cli
from circuitlab.methods import registry
from circuitlab.models import toy
from tests.cli_refusal import refused as one_line_error

PACKAGE = Path(cli.__file__).resolve().parent




def test_top_level_help_lists_every_command(capsys):
    for argv in ([], ["--help"], ["-h"], ["help"]):
        cli.main(argv)
        out = capsys.readouterr().out
        assert out.startswith("usage: circuitlab") and all(f"    {name}" in out for name in cli.COMMANDS), out


@pytest.mark.parametrize("command", [c for c in cli.COMMANDS if c != "run"])
def test_every_subcommand_answers_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: circuitlab {command} [-h]") and "options:" in out


def test_run_help_is_hydras_with_circuitlabs_header(tmp_path):
    """`circuitlab run --help` goes to Hydra unchanged: the config groups and the config, under circuitlab's usage."""
    proc = subprocess.run([sys.executable, "-m", "circuitlab.cli", "run", "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: circuitlab run [-m] [--cfg job] [--config-dir DIR]")
    assert "== Configuration groups ==" in proc.stdout and "experiment: " in proc.stdout and "threads: null" in proc.stdout
    assert not (tmp_path / "results").exists() and not (tmp_path / "outputs").exists()


BAD_COMMANDS = {
    "unknown command": (["frobnicate"], "unknown command 'frobnicate'; allowed: run, figures"),
    "unknown flag": (["figures", "--colour"], "figures: unrecognized arguments: --colour"),
    "report title without text": (["report", "--title"], "report: argument --title: expected one argument"),
    "merge without --out": (["merge", "a", "b"], "merge: the following arguments are required: --out"),
    "merge without shards": (["merge", "--out", "x"], "merge: the following arguments are required: SHARD_DIR"),
    "list of what": (["list", "widgets"], "list: argument WHAT: invalid choice: 'widgets'"),
    "list twice": (["list", "streams", "tasks"], "list: unrecognized arguments: tasks"),
}


@pytest.mark.parametrize("case", list(BAD_COMMANDS))
def test_bad_command_lines_are_one_line(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv, expected = BAD_COMMANDS[case]
    assert expected in one_line_error(argv, capsys)
    assert not any(tmp_path.iterdir())


BAD_TRAIN_TOY = {
    "no task": ([], "train-toy: task=NAME is required; allowed: task=ioi|factual|addition"),
    "unknown task": (["task=chess"], "task=chess is not allowed; allowed: ioi, factual, addition"),
    "steps 0": (["task=ioi", "steps=0"], "steps=0 is not allowed; allowed: a positive integer"),
    "steps negative": (["task=ioi", "steps=-1"], "steps=-1 is not allowed"),
    "steps not a number": (["task=ioi", "steps=abc"], "steps=abc is not allowed"),
    "steps a fraction": (["task=ioi", "steps=1.5"], "steps=1.5 is not allowed"),
    "steps empty": (["task=ioi", "steps="], "steps= is not allowed"),
    "out empty": (["task=ioi", "out="], "out=(empty) is not allowed"),
    "out a file": (["task=ioi", "out=a_file"], "out=a_file: not a directory"),
    "out below a file": (["task=ioi", "out=a_file/model"], "out=a_file/model: cannot be created (a_file is a file"),
    "unknown key": (["task=ioi", "seed=1"], "train-toy: 'seed=1' is not a setting; allowed: task=ioi|factual|addition (required), out=DIR, steps=N"),
    "not key=value": (["ioi"], "train-toy: 'ioi' is not a setting"),
    "a key twice": (["task=ioi", "task=factual"], "train-toy: task is given twice (task=ioi, task=factual)"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_TOY))
def test_train_toy_values_are_checked_before_training(case, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(toy, "train_toy", lambda *a, **k: pytest.fail("trained with bad settings"))
    (tmp_path / "a_file").write_text("not a dir")
    argv, expected = BAD_TRAIN_TOY[case]
    assert expected in one_line_error(["train-toy", *argv], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_train_toy_hands_checked_values_to_the_recipe(capsys, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(toy, "train_toy", lambda name, out, steps=None: calls.append((name, out, steps)) or
                        {"recipe": {"steps": steps}, "heldout_pair_accuracy": 1.0, "train_seconds": 0})
    cli.main(["train-toy", "task=factual", "steps=7", f"out={tmp_path / 'toy'}"])
    assert calls == [("toy-facts", tmp_path / "toy", 7)]
    assert "after 7 steps" in capsys.readouterr().out


def test_list_methods_reads_the_registry(capsys, monkeypatch):
    """A method registered without any YAML is listed, with its summary; the YAML-less name proves the source."""
    extra = registry.Method("made_up_method", registry.METHODS["eap"].schema, "circuitlab.methods.eap.method", summary="only in the registry")
    monkeypatch.setitem(registry.METHODS, extra.name, extra)
    cli.main(["list", "methods"])
    lines = capsys.readouterr().out.splitlines()
    listed = [ln.split()[0] for ln in lines[1:]]
    assert listed == list(registry.METHODS) and "made_up_method" in listed
    assert any(ln.split() == ["made_up_method", "only", "in", "the", "registry"] for ln in lines)
    assert all(method.summary for name, method in registry.METHODS.items() if name != extra.name)


def test_list_all_keeps_the_experiments_last(capsys):
    """scripts/reproduce_seeds.sh reads `circuitlab list experiments`: a header line, then NAME  about."""
    cli.main(["list", "experiments"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("experiments") and [ln.split()[0] for ln in lines[1:]] == cli.group_options("experiment")


# the layering of the command-line modules ---------------------------------------------------------------------------

CLI_MODULES = ("cli", "compose", "hydra_app", "multirun", "api")


def imported_modules(module: str) -> set[str]:
    """The circuitlab modules `module` imports anywhere in its file (module level and inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("circuitlab"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("circuitlab"))
    return {name.split(".")[1] for name in found if name.count(".") >= 1} & set(CLI_MODULES)


def test_no_import_circle_among_the_command_line_modules():
    graph = {module: imported_modules(module) - {module} for module in CLI_MODULES}
    assert graph["compose"] == set(), "compose.py is the bottom: it imports none of cli, hydra_app, multirun, api"
    assert "cli" not in graph["hydra_app"] | graph["multirun"] | graph["api"]

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    circles = [m for m in CLI_MODULES if reaches(m, m)]
    assert not circles, f"import circle through {circles}: {graph}"


def test_the_old_names_still_import_from_cli():
    """Tests, scripts and notebooks imported the config helpers from cli: they still can (the same objects)."""
    from circuitlab import compose

    for name in ("CONFIG_DIR", "compose_config", "group_options", "check_group_choices", "one_line_error", "preflight"):
        assert getattr(cli, name) is getattr(compose, name)
