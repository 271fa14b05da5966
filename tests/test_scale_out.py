"""Scale-out: sharded-then-merged equals unsharded; SIGKILL-then-resume equals uninterrupted and recomputes no
finished chunk; CUDA out-of-memory halves the chunk; multirun writes a sweep index."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.merge import merge_shards
from circuitlab.engine import sweep as engine_sweep
from circuitlab.results import load_tensors
from circuitlab.run import run_experiment

QUIET = ["progress=false", "figures=false"]


def run(overrides: list[str], run_dir: Path) -> dict:
    return run_experiment(cli.compose_config([*overrides, *QUIET, f"run.dir={run_dir}"]), run_dir)


def assert_same_run(a: Path, b: Path, atol: float = 0.0) -> None:
    """Same rows, tensors and extra tables; values equal (atol=0: bit for bit)."""
    fa, fb = pd.read_csv(a / "results.csv"), pd.read_csv(b / "results.csv")
    pd.testing.assert_frame_equal(fa.drop(columns="value"), fb.drop(columns="value"))
    assert ((fa["value"] - fb["value"]).abs().max() <= atol) if atol else (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    ta, tb = load_tensors(a / "results.pt"), load_tensors(b / "results.pt")
    assert ta.keys() == tb.keys()
    for key in ta:
        if isinstance(ta[key], torch.Tensor):
            torch.testing.assert_close(ta[key], tb[key], atol=atol, rtol=0, equal_nan=True, msg=key)
        else:
            assert ta[key] == tb[key], key
    for table in ("faithfulness.csv", "important_heads.csv", "edges.csv"):
        if (a / table).exists():
            pd.testing.assert_frame_equal(pd.read_csv(a / table), pd.read_csv(b / table), atol=atol, rtol=0, check_exact=not atol)


@pytest.mark.parametrize("preset", [["+experiment=ioi_heads"], ["+experiment=known_circuit_scales"],
                                    ["+experiment=addition_path_to_logits", "task.n_prompts=8", "memory_budget_mb=1"],
                                    ["+experiment=known_circuit_eap", "method=edge_patching", "task.n_prompts=8", "memory_budget_mb=1"]])
def test_sharded_then_merged_equals_unsharded(tmp_path, preset):
    whole = run(preset, tmp_path / "whole")
    shards = [tmp_path / f"shard{i}" for i in range(3)]
    computed = [run([*preset, f"sweep.shard={i}", "sweep.num_shards=3"], d)["chunks"]["chunks_computed"] for i, d in enumerate(shards)]
    assert sum(computed) == whole["chunks"]["chunks_computed"] and min(computed) > 0  # disjoint, and together all
    merged = merge_shards(shards[::-1], tmp_path / "merged")
    assert merged["chunks"]["chunks_computed"] == 0 and merged["chunks"]["chunks_loaded"] == whole["chunks"]["chunks_computed"]
    assert_same_run(tmp_path / "whole", tmp_path / "merged")  # bit for bit: each chunk ran in the same batch
    assert any(f.startswith("figures/") for f in merged["files"])


def test_merge_refuses_what_is_not_one_sweep(tmp_path):
    preset = ["+experiment=ioi_patching", "task.n_prompts=8", "sweep.layers=[1]"]
    for i in range(2):
        run([*preset, f"sweep.shard={i}", "sweep.num_shards=2"], tmp_path / f"s{i}")
    run([*preset, "sweep.shard=1", "sweep.num_shards=2", "seed=5"], tmp_path / "other")
    with pytest.raises(CircuitlabError, match="shards 1 of 2 missing"):
        merge_shards([tmp_path / "s0"], tmp_path / "out")
    with pytest.raises(CircuitlabError, match="seed"):
        merge_shards([tmp_path / "s0", tmp_path / "other"], tmp_path / "out")
    with pytest.raises(CircuitlabError, match="given twice"):
        merge_shards([tmp_path / "s0", tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="nothing is overwritten"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "out").exists()


def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """A run SIGKILLed after 4 stored chunks, rerun into its dir, loads those 4 and computes only the rest."""
    args = ["run", "+experiment=ioi_heads", "task.n_prompts=16", "memory_budget_mb=2", *QUIET]
    whole = _cli([*args, "run.dir=whole"], tmp_path)
    assert whole.returncode == 0, whole.stderr
    total = json.loads((tmp_path / "whole" / "manifest.json").read_text())["chunks"]["chunks_computed"]
    assert total > 8

    killed = _cli([*args, "run.dir=crash"], tmp_path, {"CIRCUITLAB_KILL_AFTER_CHUNKS": "4"})
    assert killed.returncode == -9, killed.stderr
    finished = {p.name: p.read_bytes() for p in (tmp_path / "crash" / "chunks").glob("*.pt")}
    assert len(finished) == 4 and not (tmp_path / "crash" / "results.csv").exists()

    resumed = _cli([*args, "run.dir=crash"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    chunks = json.loads((tmp_path / "crash" / "manifest.json").read_text())["chunks"]
    assert chunks["chunks_loaded"] == 4 and chunks["chunks_computed"] == total - 4
    after = {p.name: p.read_bytes() for p in (tmp_path / "crash" / "chunks").glob("*.pt")}
    assert all(after[name] == data for name, data in finished.items())  # finished chunks untouched
    assert len(after) == total
    assert_same_run(tmp_path / "whole", tmp_path / "crash")


def test_resume_refuses_another_config_and_can_start_over(tmp_path):
    args = ["run", "+experiment=ioi_patching", "task.n_prompts=8", *QUIET, "run.dir=r"]
    assert _cli(args, tmp_path).returncode == 0
    before = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()}
    refused = _cli([*args, "seed=3"], tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "seed=0 there, 3 here" in refused.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "r").rglob("*") if p.is_file()} == before  # nothing overwritten
    again = _cli([*args, "seed=3", "run.resume=false"], tmp_path)
    assert again.returncode == 0, again.stderr
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["chunks"]["chunks_loaded"] == 0


def test_out_of_memory_halves_the_chunk(tmp_path, monkeypatch, caplog):
    """A forward over more than 2 points raises CUDA's out-of-memory error: the chunk is split until it fits, the
    run goes on, and the numbers are those of an unconstrained run."""
    from circuitlab.locations import Location
    from tests.conftest import ioi_pairs

    from circuitlab.config import ModelConfig
    from circuitlab.models import loading

    model = engine_sweep  # the module whose forward we constrain
    locations = [Location("z", layer, "all", (head,), "", head) for layer in (0, 1) for head in range(4)]
    toy = loading.load_model(ModelConfig(source="embedded", name="toy-ioi"), device="cpu")
    pairs = ioi_pairs(toy, n_prompts=6)
    expected = engine_sweep.patch_sweep(toy, pairs, locations, progress=False).logit_diff
    real = model._patched_final_resid

    def small_memory(m, layer, start, spec, cache, source, pos_masks, *args):
        if pos_masks.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(m, layer, start, spec, cache, source, pos_masks, *args)

    calls = []
    monkeypatch.setattr(model, "_patched_final_resid", lambda *a: calls.append(a[6].shape[0]) or small_memory(*a))
    with caplog.at_level(logging.WARNING, logger="circuitlab"):
        got = engine_sweep.patch_sweep(toy, pairs, locations, progress=False).logit_diff
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert "halving it" in caplog.text and max(calls) > 2 and sum(n for n in calls if n <= 2) == len(locations)


def test_multirun_writes_a_sweep_index(tmp_path, monkeypatch):
    proc = _cli(["run", "-m", "+experiment=ioi_patching", "task.n_prompts=8", "sweep.layers=[1]", "seed=0,1", *QUIET, "results_dir=out"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    index = pd.read_csv(next((tmp_path / "out").rglob("index.csv")))
    assert list(index["status"]) == ["done", "done"] and list(index["job"]) == [0, 1]
    assert index["overrides"].str.contains("seed=1").any()
    for run_dir in index["run_dir"]:
        assert (tmp_path / run_dir / "results.csv").is_file()


@pytest.mark.slow
def test_submitit_local_multirun(tmp_path):
    """A real multirun through submitit's local executor (the Slurm launcher's code path, on this machine)."""
    proc = _cli(["run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "+experiment=ioi_patching",
                 "task.n_prompts=8", "sweep.layers=[1]", "seed=0,1", *QUIET, "results_dir=out"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    index = pd.read_csv(next((tmp_path / "out").rglob("index.csv")))
    assert sorted(index["status"]) == ["done", "done"]
    frames = [pd.read_csv(tmp_path / d / "results.csv") for d in index["run_dir"]]
    assert all(len(f) for f in frames) and not frames[0]["value"].equals(frames[1]["value"])  # two seeds, two prompt sets


def test_local_gpus_jobs_claim_distinct_gpus(tmp_path, monkeypatch):
    """The slot locks (no GPU needed: CUDA's presence is faked): held slots are skipped, released ones reused."""
    from circuitlab.devices import claimed_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with claimed_gpu(tmp_path) as first, claimed_gpu(tmp_path) as second:
        assert (first, second) == ("cuda:0", "cuda:1")
        with pytest.raises(RuntimeError, match="every GPU slot"):
            with claimed_gpu(tmp_path):
                pass
    with claimed_gpu(tmp_path) as again:
        assert again == "cuda:0"
    with claimed_gpu(tmp_path, enabled=False) as none:
        assert none is None
