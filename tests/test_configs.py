"""Every experiment preset composes from the real config files and passes validation before any model load."""

from __future__ import annotations

import pytest

from circuitlab.methods import registry
import yaml

from circuitlab import cli
from circuitlab.config import plain
from circuitlab.plan import prepare

PRESETS = cli.group_options("experiment")


def test_presets_exist():
    assert "ioi_patching" in PRESETS


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_composes_and_validates(preset):
    cfg = cli.compose_config([f"+experiment={preset}"])
    assert cfg.name == preset
    plan = prepare(cfg)
    assert plan.pairs.n_pairs > 0
    assert (plan.locations if registry.get(cfg.method.name).sweeps else plan.locations == [])  # False: it reads the whole model


@pytest.mark.parametrize("group", ["model", "task", "method", "sweep"])
def test_every_group_option_composes(group):
    for option in cli.group_options(group):
        overrides = [f"{group}={option}"] + (["model.path=/x"] if option == "local" else [])
        cfg = cli.compose_config(overrides)
        chosen = yaml.safe_load((cli.CONFIG_DIR / group / f"{option}.yaml").read_text())
        for key, value in chosen.items():  # the option's own values are what the composed group holds
            if key != "defaults" and not any(o.startswith(f"{group}.{key}=") for o in overrides):
                assert plain(cfg[group][key]) == value, (group, option, key)


def test_alias_streams_and_hydra_overrides():
    cfg = cli.compose_config(["+experiment=ioi_patching", "sweep.streams=[block_input,attention_output]", "sweep.layers=[1]"])
    plan = prepare(cfg)
    assert {loc.stream for loc in plan.locations} == {"resid_pre", "attn_out"}
    assert {loc.layer for loc in plan.locations} == {1}


@pytest.mark.slow
@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_end_to_end(preset, tmp_path):
    from circuitlab.run import run_experiment

    manifest = run_experiment(cli.compose_config([f"+experiment={preset}", "progress=false"]), tmp_path)
    assert (tmp_path / "results.csv").is_file() and manifest["files"]
    assert any(f.startswith("figures/") and f.endswith(".png") for f in manifest["files"]), manifest["files"]
