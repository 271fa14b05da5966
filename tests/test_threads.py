"""`threads: null | N`: torch's intra-op threads, checked in one line, set before the run's torch work (the model's
load, the method) in a CLI run, a multirun's jobs and circuitlab.run(), recorded in the manifest; null gives torch's
default back; not part of what a rerun must match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitlab import cli, threads
from circuitlab.methods.activation_patching import method as activation_patching
from circuitlab.models import loading

RUN = ["+experiment=ioi_patching", "task.n_prompts=4", "sweep.layers=[0]", "progress=false", "figures=false"]
DEFAULT = torch.get_num_threads()
OTHER = DEFAULT + 1  # a count that is not the default, whatever OMP_NUM_THREADS says


@pytest.fixture(autouse=True)
def default_threads():
    threads.apply(None)  # remember torch's default before any test sets another
    yield
    threads.apply(None)
    assert torch.get_num_threads() == DEFAULT


@pytest.fixture
def seen(monkeypatch):
    """torch's thread count when the model loads and when the method runs, per run."""
    seen = []
    load, run = loading.load_model, activation_patching.run
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: seen.append(("load", torch.get_num_threads())) or load(*a, **k))
    monkeypatch.setattr(activation_patching, "run", lambda *a, **k: seen.append(("method", torch.get_num_threads())) or run(*a, **k))
    return seen


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.mark.parametrize("value, expected", [("0", "threads=0 is not allowed; allowed: null (torch's default) or a positive integer"),
                                             ("-2", "threads=-2 is not allowed"), ("abc", "threads: "), ("1.5", "threads: "),
                                             ("true", "threads")])
def test_bad_threads_are_one_line(value, expected, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *RUN, f"threads={value}"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and expected in err, err
    assert not any(tmp_path.iterdir())
    assert torch.get_num_threads() == DEFAULT


def test_default_is_null():
    assert cli.compose_config(RUN).threads is None


def test_cli_run_sets_threads_before_the_torch_work_and_records_them(tmp_path, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.main(["run", *RUN, f"threads={OTHER}", "run.dir=a"])
    assert seen == [("load", OTHER), ("method", OTHER)]
    assert manifest(tmp_path / "a")["threads"] == {"setting": OTHER, "torch_threads": OTHER}
    seen.clear()
    cli.main(["run", *RUN, "run.dir=b"])  # null: torch's default again, in the same process
    assert seen == [("load", DEFAULT), ("method", DEFAULT)]
    assert manifest(tmp_path / "b")["threads"] == {"setting": None, "torch_threads": DEFAULT}


def test_rerun_with_other_threads_resumes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.main(["run", *RUN, "run.dir=r"])
    cli.main(["run", *RUN, f"threads={OTHER}", "run.dir=r"])
    record = manifest(tmp_path / "r")
    assert record["chunks"]["chunks_computed"] == 0 and record["threads"]["torch_threads"] == OTHER


def test_each_multirun_job_sets_its_own(tmp_path, seen, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli.main(["run", "-m", *RUN, f"threads={OTHER},null", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert [n for phase, n in seen if phase == "method"] == [OTHER, DEFAULT]
    assert [manifest(tmp_path / "s" / job)["threads"]["torch_threads"] for job in ("0", "1")] == [OTHER, DEFAULT]


def test_notebook_run_sets_threads(tmp_path, seen):
    import circuitlab

    result = circuitlab.run("ioi_patching", *RUN[1:], f"run.dir={tmp_path / 'r'}", threads=OTHER)
    assert seen[-1] == ("method", OTHER) and result.manifest["threads"] == {"setting": OTHER, "torch_threads": OTHER}
