"""InterpBench-style checkpoints load safely and reproduce the saved model."""

from __future__ import annotations

import pickle

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab.errors import ConfigError
from circuitlab.models.interpbench import load_checkpoint, read_config, save_checkpoint


def tiny_model() -> HookedTransformer:
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8, d_vocab=12, act_fn="relu",
                                  normalization_type=None, seed=3, device="cpu")
    return HookedTransformer(cfg).eval()


def test_json_config_and_state_dict_round_trip(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path)
    loaded = load_checkpoint(tmp_path)
    tokens = torch.randint(0, 12, (3, 8))
    torch.testing.assert_close(loaded(tokens), model(tokens))


def test_pickled_config_only_by_name(tmp_path):
    model = tiny_model()
    save_checkpoint(model, tmp_path)
    config = read_config(tmp_path)
    (tmp_path / "ll_model_cfg.json").unlink()
    with open(tmp_path / "ll_model_cfg.pkl", "wb") as f:
        pickle.dump(config, f)
    with pytest.raises(ConfigError, match="model.allow_pickle=false"):
        load_checkpoint(tmp_path)
    tokens = torch.randint(0, 12, (2, 8))
    torch.testing.assert_close(load_checkpoint(tmp_path, allow_pickle=True)(tokens), model(tokens))


class NotATensor:
    pass


def test_weights_are_loaded_with_weights_only(tmp_path):
    save_checkpoint(tiny_model(), tmp_path)
    torch.save({"payload": NotATensor()}, tmp_path / "ll_model.pth")
    with pytest.raises(ConfigError, match="weights_only"):
        load_checkpoint(tmp_path)


def test_missing_files_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="model.path"):
        load_checkpoint(tmp_path)


def test_yaml_config(tmp_path):
    import yaml

    model = tiny_model()
    save_checkpoint(model, tmp_path)
    config = read_config(tmp_path)
    (tmp_path / "ll_model_cfg.json").unlink()
    (tmp_path / "ll_model_cfg.yaml").write_text(yaml.safe_dump(config))
    tokens = torch.randint(0, 12, (2, 8))
    torch.testing.assert_close(load_checkpoint(tmp_path)(tokens), model(tokens))


def test_checkpoint_dir_runs_as_a_local_model(tmp_path, monkeypatch, capsys):
    """model=local on an InterpBench-style dir without a tokenizer: prompts as token ids; a pickled config is
    refused in one line unless model.allow_pickle=true."""
    import json

    from circuitlab import cli
    from circuitlab.results import read_results

    checkpoint = tmp_path / "case"
    save_checkpoint(tiny_model(), checkpoint)
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"clean": "3 4 5 3", "corrupted": "3 4 5 6", "answer": "7", "wrong": "8"},
        {"clean": "1 2 9 1", "corrupted": "1 2 9 2", "answer": "7", "wrong": "8"},
    ]) + "\n")
    monkeypatch.chdir(tmp_path)
    common = ["run", "model=local", f"model.path={checkpoint}", "task=pairs", f"task.path={tmp_path / 'pairs.jsonl'}",
              "sweep=named_positions", "sweep.positions=[END]", "results_dir=out", "progress=false", "figures=false"]
    cli.main([*common, "run.dir=out/json"])
    frame = read_results(tmp_path / "out" / "json")
    assert set(frame["layer"]) == {0, 1} and frame["value"].notna().all()

    config = read_config(checkpoint)
    (checkpoint / "ll_model_cfg.json").unlink()
    with open(checkpoint / "ll_model_cfg.pkl", "wb") as f:
        pickle.dump(config, f)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*common, "run.dir=out/refused"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.allow_pickle=false" in err
    cli.main([*common, "model.allow_pickle=true", "run.dir=out/pickled"])
    assert (tmp_path / "out" / "pickled" / "results.csv").is_file()
