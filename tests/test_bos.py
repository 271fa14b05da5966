"""`model.bos`: what every prompt starts with (the tokenizer's BOS, none, or a named token), the same for every task
and split, recorded in the manifest; a token the vocabulary lacks is one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab import cli
from circuitlab.config import IOITaskConfig
from circuitlab.errors import ConfigError
from circuitlab.metrics import logit_diff
from circuitlab.plan import bos_prefix, special_ids
from circuitlab.run import run_experiment
from circuitlab.tasks import ioi


def test_prefix_per_setting(toy_model):
    tokenizer = toy_model.tokenizer
    assert bos_prefix(tokenizer, "tokenizer") == [tokenizer.bos_token_id]
    assert bos_prefix(tokenizer, "none") == []
    assert bos_prefix(tokenizer, "Mary") == [tokenizer.convert_tokens_to_ids("Mary")]
    with pytest.raises(ConfigError, match=r"model.bos=Marry is not allowed; allowed: tokenizer, none, or one token"):
        bos_prefix(tokenizer, "Marry")
    prefix, pad = special_ids(tokenizer, "none")
    assert prefix == [] and pad == tokenizer.pad_token_id


def test_named_positions_follow_the_prefix(toy_model):
    """Without a BOS every token and named position moves one place left; the prompts are otherwise the same."""
    cfg = IOITaskConfig(n_prompts=8, templates="when")
    tokenizer = toy_model.tokenizer
    with_bos = ioi.build_pairs(cfg, tokenizer, *special_ids(tokenizer, "tokenizer"), 0)
    without = ioi.build_pairs(cfg, tokenizer, *special_ids(tokenizer, "none"), 0)
    assert torch.equal(with_bos.clean_tokens[:, 1:], without.clean_tokens)
    assert (with_bos.clean_tokens[:, 0] == tokenizer.bos_token_id).all()
    for label, positions in with_bos.named_positions.items():
        assert torch.equal(positions - 1, without.named_positions[label]), label


def test_run_without_bos_records_it_and_measures_those_prompts(tmp_path, toy_model):
    cfg = cli.compose_config(["+experiment=ioi_patching", "task.n_prompts=8", "sweep.layers=[1]", "sweep.streams=[resid_pre]",
                              "model.bos=none", "figures=false"])
    manifest = run_experiment(cfg, tmp_path / "run")
    assert manifest["bos"] == {"setting": "none", "ids": [], "tokens": []}
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["bos"]["setting"] == "none"
    pairs = ioi.build_pairs(IOITaskConfig(**{k: v for k, v in cfg.task.items() if k != "name"}), toy_model.tokenizer, [], 0, cfg.seed)
    rows = torch.arange(pairs.n_pairs)
    clean = logit_diff(toy_model(pairs.clean_tokens)[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
    assert manifest["baselines"]["clean"]["logit_diff"] == pytest.approx(float(clean), abs=1e-5)


def test_unknown_bos_token_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "+experiment=ioi_patching", "model.bos=nope_token"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.bos=nope_token is not allowed" in err[0] and "<|endoftext|>" in err[0]
