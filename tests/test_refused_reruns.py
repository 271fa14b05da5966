"""A rerun refused because its dir holds a run of another config changes nothing there, in every form the dir can be
named: `run.dir=`, `hydra.run.dir=`, a multirun's job dirs (`hydra.sweep.dir=`) and the notebook API. Each dir is
compared by a digest of every file and directory under it: bytes, size and modification time (ns)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from circuitlab import cli
from tests.cli_refusal import refused

RUN = ["+experiment=ioi_patching", "task.n_prompts=4", "sweep.layers=[0]", "progress=false", "figures=false"]


def digest(directory: Path) -> dict[str, tuple]:
    """Every path under `directory` (hidden ones included) -> (sha256 or 'dir', size, mtime_ns)."""
    out = {".": ("dir", 0, directory.stat().st_mtime_ns)}
    for path in sorted(directory.rglob("*")):
        stat = path.stat()
        content = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(directory))] = (content, 0 if path.is_dir() else stat.st_size, stat.st_mtime_ns)
    return out




@pytest.mark.parametrize("form", ["run.dir", "hydra.run.dir"])
def test_refused_single_run_leaves_the_dir_as_it_was(form, tmp_path, capsys, monkeypatch):
    """Before: in the hydra.run.dir form Hydra had rewritten .hydra/*.yaml and hydra_app.log before the run refused."""
    monkeypatch.chdir(tmp_path)
    cli.main(["run", *RUN, f"{form}={tmp_path / 'r'}"])
    before = digest(tmp_path / "r")
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "hydra_app.log", "run_config.json", "results.csv"} <= set(before)
    err = refused(["run", *RUN, "seed=1", f"{form}={tmp_path / 'r'}"], capsys)
    assert "holds a run of another config (seed=0 there, 1 here)" in err
    assert digest(tmp_path / "r") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # no other dir made either


def test_hydra_run_dir_is_the_dir_checked_not_run_dir(tmp_path, capsys, monkeypatch):
    """Both given: Hydra writes hydra.run.dir, so that is the dir a rerun is checked against."""
    monkeypatch.chdir(tmp_path)
    cli.main(["run", *RUN, f"hydra.run.dir={tmp_path / 'r'}", f"run.dir={tmp_path / 'elsewhere'}"])
    before = digest(tmp_path / "r")
    refused(["run", *RUN, "seed=1", f"hydra.run.dir={tmp_path / 'r'}", f"run.dir={tmp_path / 'elsewhere'}"], capsys)
    assert digest(tmp_path / "r") == before and not (tmp_path / "elsewhere").exists()


def test_refused_multirun_job_leaves_the_sweep_dir_as_it_was(tmp_path, capsys, monkeypatch):
    """A sweep into the same hydra.sweep.dir where job 0 would resume but job 1 holds another config: refused before
    Hydra writes multirun.yaml or runs job 0; index.csv / index.html untouched."""
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    cli.main(["run", "-m", *RUN, "seed=0,1", f"hydra.sweep.dir={sweep}"])
    before = digest(sweep)
    assert {"multirun.yaml", "index.csv", "0/results.csv", "1/.hydra/config.yaml", "1/hydra_app.log"} <= set(before)
    err = refused(["run", "-m", *RUN, "seed=0,2", f"hydra.sweep.dir={sweep}"], capsys)
    assert err.startswith("circuitlab: error: multirun job 1 of 2 (seed=2): ") and "(seed=1 there, 2 here)" in err
    assert digest(sweep) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]


def test_multirun_job_dirs_follow_hydras_subdir(tmp_path, capsys, monkeypatch):
    """The job dir checked is the one Hydra's launcher names: here hydra.sweep.subdir=${hydra.job.override_dirname}."""
    monkeypatch.chdir(tmp_path)
    sweep, subdir = tmp_path / "sweep", "hydra.sweep.subdir=${hydra.job.override_dirname}"
    cli.main(["run", "-m", *RUN, "seed=3", f"hydra.sweep.dir={sweep}", subdir])
    job = next(p for p in sweep.iterdir() if p.is_dir())
    assert "seed=3" in job.name
    before = digest(sweep)
    # the same job dir (the override dirname leaves out nothing that differs), another config: refused
    err = refused(["run", "-m", *RUN, "seed=3", "method.direction=noising", f"hydra.sweep.dir={sweep}", "hydra.job.config.override_dirname"
                   ".exclude_keys=[method.direction]", subdir], capsys)
    assert f"run.dir={job}: holds a run of another config" in err
    assert digest(sweep) == before


def test_refused_notebook_run_leaves_the_dir_as_it_was(tmp_path):
    import circuitlab
    from circuitlab.errors import CircuitlabError

    circuitlab.run("ioi_patching", *RUN[1:], f"run.dir={tmp_path / 'r'}")
    before = digest(tmp_path / "r")
    with pytest.raises(CircuitlabError, match="holds a run of another config"):
        circuitlab.run("ioi_patching", *RUN[1:], "seed=1", f"run.dir={tmp_path / 'r'}")
    assert digest(tmp_path / "r") == before
