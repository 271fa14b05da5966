"""End to end: the run dir's files, determinism, `--cfg job`, and figures redrawn from the CSV alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.results import csv_columns, load_tensors
from circuitlab.run import run_experiment

SMALL = ["+experiment=ioi_patching", "task.n_prompts=8", "sweep.streams=[resid_pre,block_output]", "progress=false"]


def small_run(tmp_path, name, extra=()):
    cfg = cli.compose_config([*SMALL, *extra])
    manifest = run_experiment(cfg, tmp_path / name)
    return tmp_path / name, manifest


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    directory, _ = small_run(tmp_path_factory.mktemp("run"), "a")
    return directory


def test_run_dir_layout(run_dir):
    for name in ("results.csv", "results.pt", "dataset.pt", "manifest.json", "figures/patching_heatmap.png", "figures/patching_heatmap.pdf"):
        assert (run_dir / name).is_file(), name
    frame = pd.read_csv(run_dir / "results.csv")
    assert list(frame.columns) == csv_columns()
    assert set(frame["metric"]) == {"logit_diff", "logit_diff_normalized"}
    assert set(frame["stream"]) == {"resid_pre", "resid_post"}, "aliases are written under their canonical name"
    width = load_tensors(run_dir / "dataset.pt")["clean_tokens"].shape[1]
    assert len(frame) == 2 * 2 * 2 * width  # streams x layers x positions x metrics
    assert frame["head"].isna().all()


def test_tensors_and_dataset(run_dir):
    tensors = load_tensors(run_dir / "results.pt")
    frame = pd.read_csv(run_dir / "results.csv")
    grid = tensors["resid_pre/logit_diff"]
    assert grid.shape == (2, len(tensors["position_labels"]))
    from_csv = frame[(frame.stream == "resid_pre") & (frame.metric == "logit_diff")]["value"].to_numpy()
    torch.testing.assert_close(grid.flatten(), torch.tensor(from_csv, dtype=torch.float32))
    data = load_tensors(run_dir / "dataset.pt")
    for key in ("clean_tokens", "corrupted_tokens"):
        assert data[key].dtype == torch.int64 and data[key].shape == (8, grid.shape[1])
    for key in ("answer_tokens", "wrong_tokens"):
        assert data[key].dtype == torch.int64 and data[key].shape == (8,)
    assert set(data["position_labels"]) == {"IO", "S1", "S2", "END"}


def test_manifest(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config"]["task"]["n_prompts"] == 8
    assert manifest["model"]["n_layers"] == 2 and manifest["device"] == "cpu" and manifest["seed"] == 0
    assert {"torch", "transformer-lens", "hydra-core"} <= set(manifest["versions"])
    assert {"prepare", "load_model", "sweep", "write_results"} <= set(manifest["wall_time_seconds"])
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / ".git").exists():  # the commit this code was run from (+dirty with uncommitted changes)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
        assert manifest["git_commit"].removesuffix("+dirty") == head
    else:
        assert manifest["git_commit"] is None
    assert manifest["baselines"]["clean"]["logit_diff"] > manifest["baselines"]["corrupted"]["logit_diff"]
    from circuitlab.config import ModelConfig
    from circuitlab.models import loading

    model = loading.load_model(ModelConfig(source="embedded", name="toy-ioi"), device="cpu")
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**20
    memory = manifest["memory"]
    assert memory["weights_mb"] == round(weights, 1) and memory["budget_mb"] == 1024
    assert set(memory["by_phase"]) == {"load_model", "method"} and abs(memory["peak_rss_mb"] - max(memory["by_phase"].values())) <= 2
    assert memory["process_peak_rss_mb"] >= memory["peak_rss_mb"]
    assert 100 < memory["peak_rss_mb"] < 8000  # torch alone takes ~100 MB


def test_peak_memory_per_phase(tmp_path):
    """A phase's peak counts what it held: 400 MB touched for 0.2 s raise it by about that much, the next phase
    without them does not; the process's peak (as /usr/bin/time reports it) keeps them. In a fresh process, so that
    this one's history does not matter."""
    script = (
        "import time, torch\n"
        "from circuitlab import memory\n"
        "meter = memory.PeakMeter('cpu')\n"
        "before = memory.rss_mb()\n"
        "block = torch.ones(100 * 2**20)\n"
        "time.sleep(0.2)\n"
        "del block\n"
        "print(before, meter.mark('big'), meter.mark('small'), memory.process_peak_mb())\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, big, small, process = map(float, proc.stdout.split())
    assert 390 <= big - before <= 420 and small < before + 50 and process >= big - 2, (before, big, small, process)  # batched counters


def test_same_seed_same_numbers_other_seed_other_prompts(tmp_path, run_dir):
    again, _ = small_run(tmp_path, "b")
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "results.csv"), pd.read_csv(again / "results.csv"))
    other, _ = small_run(tmp_path, "c", ["seed=1"])
    a, b = load_tensors(run_dir / "dataset.pt"), load_tensors(other / "dataset.pt")
    assert not torch.equal(a["clean_tokens"], b["clean_tokens"])


def test_figures_from_csv_without_torch(run_dir):
    (run_dir / "figures" / "patching_heatmap.png").unlink()
    code = (
        "import sys; from circuitlab.cli import main; main(['figures', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'figures must not import torch'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "figures" / "patching_heatmap.png").is_file()


def test_cfg_job_prints_config(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "circuitlab.cli", "run", "+experiment=ioi_patching", "task.n_prompts=5", "--cfg", "job"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "n_prompts: 5" in proc.stdout and "name: ioi_patching" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_cli_run_writes_under_results(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "circuitlab.cli", "run", "+experiment=ioi_patching", "task.n_prompts=4",
         "sweep.streams=[mlp_out]", "figures=false", "progress=false"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (run,) = list((tmp_path / "results" / "ioi_patching").iterdir())
    assert (run / "results.csv").is_file() and (run / "manifest.json").is_file()
    assert "4 prompt pairs" in proc.stderr + proc.stdout
