"""`circuitlab plan` / `run --plan` and `sweep.num_shards=auto` (cost.py, plan_command.py), checked against what runs do:
the planned chunks are the chunks the engine computes (whole and per shard), the weight memory is the loaded model's,
nothing is loaded to plan, and a time estimate appears once a finished run left a calibration."""

from __future__ import annotations

import json

import pytest

from circuitlab import cli, cost, memory
from circuitlab.compose import compose_config
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.models import loading
from circuitlab.plan import prepare_once
from circuitlab.plan_command import auto_shards
from tests.test_scale_out import QUIET, run

PRESETS = {
    "activation patching": ["+experiment=ioi_patching", "task.n_prompts=16"],
    "heads, a small budget": ["+experiment=ioi_heads", "task.n_prompts=8", "memory_budget_mb=2"],
    "ablation, three scales": ["+experiment=known_circuit_scales"],
    "attribution (its exact sweep)": ["+experiment=ioi_attribution", "task.n_prompts=8"],
}


def estimate(overrides: list[str]) -> cost.Cost:
    cfg = compose_config([*overrides, *QUIET])
    return cost.estimate(cfg, prepare_once(cfg))


@pytest.fixture
def timings(tmp_path, monkeypatch):
    path = tmp_path / "timings.jsonl"
    monkeypatch.setenv(cost.TIMINGS_ENV, str(path))
    return path


@pytest.mark.parametrize("preset", PRESETS.values(), ids=PRESETS.keys())
def test_planned_chunks_are_the_runs(tmp_path, preset, timings):
    planned = estimate(preset)
    whole = run(preset, tmp_path / "whole")
    assert len(planned.chunks) == whole["chunks"]["chunks_computed"] > 1
    assert json.loads((tmp_path / "whole" / "chunks" / "plan.json").read_text())["chunks"] == len(planned.chunks)
    sharded = estimate([*preset, "sweep.shard=1", "sweep.num_shards=3"])
    shard = run([*preset, "sweep.shard=1", "sweep.num_shards=3"], tmp_path / "shard1")
    assert len(sharded.shard_chunks(1)) == shard["chunks"]["chunks_computed"]
    assert sum(c.points for c in planned.chunks) >= planned.points  # every computed point is in one chunk


@pytest.mark.parametrize("overrides", [["model=toy-ioi"], ["model=toy-addition", "task=addition"], ["model=known-circuit"],
                                       ["model=toy-ioi", "model.dtype=bfloat16"]])
def test_weight_memory_is_the_loaded_models(overrides):
    cfg = compose_config(overrides)
    n_params, mib = cost.weight_memory(cost.model_config(cfg.model), cfg.model.dtype)
    model = loading.load_model(cfg.model, device="cpu")
    loaded = sum(p.numel() for p in model.parameters())
    assert abs(n_params - loaded) <= 0.01 * loaded  # folded layer norms aside
    assert mib == pytest.approx(memory.weights_mb(model), rel=0.02, abs=0.05)


def test_hf_checkpoint_weight_memory(tmp_path):
    from tests import hf_fixtures

    path = hf_fixtures.build("llama", tmp_path / "llama")
    cfg = compose_config(["+experiment=ioi_patching", "model=local", f"model.path={path}"])
    n_params, mib = cost.weight_memory(cost.model_config(cfg.model), "float32")
    model = loading.load_model(cfg.model, device="cpu")
    assert abs(n_params - sum(p.numel() for p in model.parameters())) <= 0.01 * n_params
    assert mib == pytest.approx(memory.weights_mb(model), rel=0.02)


def test_plan_loads_no_weights_and_says_each_number(capsys, monkeypatch, timings):
    def refuse(*args, **kwargs):
        raise AssertionError("the plan loaded the weights")

    monkeypatch.setattr(loading, "load_model", refuse)
    cli.main(["run", "+experiment=ioi_patching", "task.n_prompts=16", "--plan"])
    out = capsys.readouterr().out
    planned = estimate(["+experiment=ioi_patching", "task.n_prompts=16"])
    for words in (f"points               {planned.points} ", f"chunks               {len(planned.chunks)} batched forwards",
                  "forward-equivalents", "memory_budget_mb=1024", f"{planned.n_params:,} parameters in float32",
                  "time                 not estimated", "nothing was loaded or computed"):
        assert words in out, out
    cli.main(["plan", "-m", "+experiment=ioi_patching", "task.n_prompts=16", "sweep.shard=0,1", "sweep.num_shards=2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "plan: 2 jobs (a multirun)"
    jobs = [ln.split() for ln in lines[2:4]]
    total = lines[4].split()
    assert [j[-1] for j in jobs] == ["sweep.shard=0", "sweep.shard=1"] and total[0] == "all"
    assert int(jobs[0][2]) + int(jobs[1][2]) == int(total[2]) == len(planned.chunks)  # the shards' chunks add up
    assert int(jobs[0][1]) + int(jobs[1][1]) == int(total[1])


def test_time_estimate_from_a_finished_run(tmp_path, capsys, timings):
    preset = ["+experiment=ioi_patching", "task.n_prompts=16", "threads=1"]
    manifest = run(preset, tmp_path / "r")
    record = json.loads(timings.read_text().splitlines()[-1])
    assert record["sweep_seconds"] == manifest["wall_time_seconds"]["sweep"] and record["threads"] == 1 and record["work"] > 0
    cli.main(["plan", *preset])
    out = capsys.readouterr().out
    assert "calibrated from 1 finished run on" in out and "1 thread: this model" in out, out
    resumed = run(preset, tmp_path / "r")  # a resumed run computed nothing: no calibration from it
    assert resumed["chunks"]["chunks_computed"] == 0 and len(timings.read_text().splitlines()) == 1


def test_auto_shards_pack_points_into_jobs(timings, capsys):
    base = ["-m", "+experiment=ioi_patching", "task.n_prompts=16"]
    planned = estimate(base[1:])
    args = auto_shards([*base, "sweep.num_shards=auto", "sweep.points_per_job=7"])
    jobs = -(-planned.points // 7)
    assert args[-2:] == [f"sweep.num_shards={jobs}", f"sweep.shard=range(0,{jobs})"] and "points_per_job" not in " ".join(args)
    assert f"sweep.num_shards=auto: {jobs} jobs, about 7 points a job" in capsys.readouterr().err
    capped = auto_shards([*base, "sweep.num_shards=auto", "sweep.points_per_job=1"])  # never more jobs than chunks
    assert capped[-2] == f"sweep.num_shards={len(planned.chunks)}"
    for args, key in [([*base[1:], "sweep.num_shards=auto", "sweep.points_per_job=7"], "sweep.num_shards"),
                      ([*base, "sweep.num_shards=auto"], "sweep.num_shards"),
                      ([*base, "sweep.num_shards=auto", "sweep.points_per_job=0"], "sweep.points_per_job"),
                      ([*base, "sweep.num_shards=auto", "sweep.points_per_job=7", "sweep.shard=0,1"], "sweep.shard"),
                      ([*base, "sweep.points_per_job=7"], "sweep.points_per_job")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            auto_shards(args)
    with pytest.raises(CircuitlabError, match="no timing calibration on this machine yet"):
        auto_shards([*base, "sweep.num_shards=auto", "sweep.job_minutes=30"])
