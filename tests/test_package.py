"""circuitlab as an installed package: the configs ship inside it, the user's own presets come in with
`--config-dir`, and (slow) a wheel installed into a fresh venv runs an experiment from an empty directory."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from circuitlab import cli

ROOT = Path(__file__).resolve().parent.parent
PRESET = """# @package _global_
# my own preset: resid_pre patching on the toy model
defaults:
  - override /model: toy-ioi
  - override /task: ioi
  - override /method: activation_patching
  - override /sweep: layer_position
name: my_preset
task:
  templates: when
  n_prompts: 8
sweep:
  streams: [resid_pre]
"""


def user_presets(tmp_path: Path) -> Path:
    presets = tmp_path / "my_presets"
    (presets / "experiment").mkdir(parents=True)
    (presets / "experiment" / "my_preset.yaml").write_text(PRESET)
    return presets


def test_configs_live_in_the_package():
    if "CIRCUITLAB_CONFIGS" not in os.environ:
        assert cli.CONFIG_DIR == Path(cli.__file__).resolve().parent / "configs"
    assert (Path(cli.__file__).parent / "configs" / "config.yaml").is_file()
    assert (ROOT / "configs").is_symlink() and (ROOT / "configs").resolve() == (ROOT / "circuitlab" / "configs").resolve()


@pytest.mark.parametrize("flag", ["--config-dir", "-cd"])
def test_user_preset_with_config_dir(tmp_path, flag):
    """A preset in the user's own folder runs by name, from a directory that is not the checkout."""
    presets = user_presets(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "circuitlab.cli", "run", flag, str(presets), "+experiment=my_preset", "progress=false", "figures=false"],
        capture_output=True, text=True, cwd=work, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (work / "results" / "my_preset").iterdir()
    frame = pd.read_csv(run_dir / "results.csv")
    assert len(frame) > 0 and set(frame["stream"]) == {"resid_pre"}


def test_config_dir_presets_are_validated_and_listed(tmp_path, capsys, monkeypatch):
    """A typo in a user preset's name lists the user's presets beside the shipped ones; a missing dir is one line."""
    monkeypatch.chdir(tmp_path)
    presets = user_presets(tmp_path)
    cfg = cli.compose_config(["+experiment=my_preset"], [presets])
    assert cfg.name == "my_preset" and cfg.task.n_prompts == 8
    for argv, expected in [
        (["run", "--config-dir", str(presets), "+experiment=my_presett"], "my_preset, "),
        (["run", f"--config-dir={tmp_path / 'nope'}", "+experiment=my_preset"], "an existing directory"),
        (["run", "+experiment=my_preset", "-cd"], "--config-dir"),
        (["run", "+experiment=my_preset"], "experiment=my_preset is not allowed"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, (argv, err)
    assert not (tmp_path / "results").exists()


def torch_pin() -> str:
    """The torch requirement the Makefile installs (`TORCH_PIN := torch==X`), so the test installs the same one."""
    match = re.search(r"^TORCH_PIN\s*:?=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, "TORCH_PIN not found in the Makefile"
    return match.group(1)


@pytest.mark.slow
def test_wheel_installs_and_runs_anywhere(tmp_path):
    """Build the wheel from a copy of the tree, install it with the pinned torch into a fresh venv, run from an empty dir."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "results", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(source), "-w", str(dist)], check=True, timeout=600)
    [wheel] = dist.glob("circuitlab-*.whl")

    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"circuitlab/configs/{p.relative_to(ROOT / 'circuitlab' / 'configs').as_posix()}"
               for p in (ROOT / "circuitlab" / "configs").rglob("*.yaml")}
    assert "circuitlab/configs/config.yaml" in shipped and "circuitlab/configs/hydra/launcher/slurm.yaml" in shipped
    assert shipped <= names, sorted(shipped - names)
    assert "hydra_plugins/circuitlab_slurm/__init__.py" in names  # the Slurm launcher (Hydra loads launchers from hydra_plugins only)
    embedded = {f"circuitlab/models/embedded/{p.parent.name}/{p.name}"
                for p in (ROOT / "circuitlab" / "models" / "embedded").glob("*/*") if p.is_file()}
    assert embedded and embedded <= names, sorted(embedded - names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python, circuitlab = venv / "bin" / "python", venv / "bin" / "circuitlab"
    # torch pinned in the same pip call as the wheel; alone, pip would resolve the latest (CUDA) torch
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", torch_pin(), str(wheel)], check=True, timeout=1800)

    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CIRCUITLAB_CONFIGS", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import circuitlab; print(circuitlab.__file__)"],
                           capture_output=True, text=True, cwd=empty, env=env, check=True)
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout

    proc = subprocess.run([str(circuitlab), "run", "+experiment=ioi_patching", "progress=false"],
                          capture_output=True, text=True, cwd=empty, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    [run_dir] = (empty / "results" / "ioi_patching").iterdir()
    assert len(pd.read_csv(run_dir / "results.csv")) > 0
    assert (run_dir / "figures" / "patching_heatmap.png").is_file()

    listing = subprocess.run([str(circuitlab), "list"], capture_output=True, text=True, cwd=empty, env=env, timeout=300)
    assert listing.returncode == 0, listing.stderr
    assert "ioi_patching" in listing.stdout and "toy-ioi" in listing.stdout and "slurm" in listing.stdout

    presets = user_presets(tmp_path)
    own = subprocess.run([str(circuitlab), "run", "--config-dir", str(presets), "+experiment=my_preset", "progress=false", "figures=false"],
                         capture_output=True, text=True, cwd=empty, env=env, timeout=600)
    assert own.returncode == 0, own.stderr
    assert (next((empty / "results" / "my_preset").iterdir()) / "results.csv").is_file()
