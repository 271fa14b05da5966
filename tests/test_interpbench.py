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
