"""Bad or partial checkpoints end in one line naming the file and what is wrong, exit code 2, before any sweep;
a pretrained name whose files are in the Hugging Face cache runs offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuitlab import cli
from tests import hf_fixtures

QUIET = ["+experiment=ioi_patching", "progress=false", "figures=false", "sweep.layers=[0]", "sweep.streams=[resid_pre]"]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return hf_fixtures.build("llama", tmp_path_factory.mktemp("llama"))


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def drop_tensor(directory: Path) -> None:
    state = load_file(str(directory / "model.safetensors"))
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})


def truncate(file: Path, keep: float = 0.5) -> None:
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * keep)])


def unknown_words_tokenizer(directory: Path) -> None:
    """A word-level tokenizer that knows none of the IOI names (they become its unknown token); as many tokens as
    before (a smaller tokenizer than the embedding is refused as another model's)."""
    from circuitlab.tasks.ioi import NAMES

    tokenizer = json.loads((directory / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    for number, name in enumerate(NAMES):
        if name.strip() in vocab:
            vocab[f"unused{number}"] = vocab.pop(name.strip())
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))


DAMAGE = {  # name: (how the checkpoint is damaged, what the one line must say)
    "no weights": (lambda d: (d / "model.safetensors").unlink(), "no weights (expected one of"),
    "truncated safetensors": (lambda d: truncate(d / "model.safetensors"), "model.safetensors: truncated"),
    "empty safetensors": (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors: truncated or empty"),
    "garbage safetensors header": (lambda d: (d / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 64),
                                   "model.safetensors: damaged"),
    "a tensor missing": (drop_tensor, "lack 1 tensor(s) that config.json calls for, first model.layers.1.mlp.down_proj.weight"),
    "shapes differ from the config": (lambda d: edit_json(d / "config.json", intermediate_size=96), "tensor shapes differ from config.json"),
    "garbage config.json": (lambda d: (d / "config.json").write_text("{not json"), "config.json: not a readable JSON file"),
    "config.json a list": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json: expected a JSON object, found list"),
    "unknown architecture": (lambda d: edit_json(d / "config.json", architectures=["MambaForCausalLM"], model_type="mamba"),
                             "architecture MambaForCausalLM is not supported; supported: GPT-2 (GPT2LMHeadModel)"),
    "sharded index naming a missing shard": (lambda d: (d / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})), "lists 1 shard(s) that are not there"),
    "no tokenizer": (lambda d: [(d / f).unlink() for f in hf_fixtures.TOKENIZER_FILES], "no usable tokenizer there"),
    "tokenizer without the task's words": (unknown_words_tokenizer, "names not single tokens"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_checkpoint_is_one_line(case, llama_dir, tmp_path, monkeypatch, capsys):
    damaged = tmp_path / "ckpt"
    shutil.copytree(llama_dir, damaged)
    damage, expected = DAMAGE[case]
    damage(damaged)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", *QUIET, "model=local", f"model.path={damaged}", f"run.dir={tmp_path / 'run'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert not (tmp_path / "run" / "results.csv").exists() and not list((tmp_path / "run").glob("chunks*"))


def test_any_path_name_and_a_config_without_n_ctx(llama_dir, tmp_path):
    """Paths whose names TransformerLens matches on ("llama", "gemma", "bert") load as what their config says; a
    GPT-2 config.json written by transformers 5 has no n_ctx and loads too."""
    from circuitlab.models import hf_checkpoint

    for name in ("my-llama-gemma-bert-t5", "gemma-2-9b"):
        shutil.copytree(llama_dir, tmp_path / name)
        assert hf_checkpoint.tl_config(tmp_path / name).original_architecture == "LlamaForCausalLM"
    gpt2 = hf_fixtures.build("gpt2", tmp_path / "gpt2")
    assert "n_ctx" not in json.loads((gpt2 / "config.json").read_text())
    assert hf_checkpoint.tl_config(gpt2).n_ctx == 64


def test_sharded_checkpoint_loads_like_the_whole_one(llama_dir, tmp_path):
    from circuitlab.models import hf_checkpoint

    sharded = hf_fixtures.build("llama", tmp_path / "sharded", max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file() and len(hf_checkpoint.weight_files(sharded)) > 2
    whole, parts = hf_checkpoint.load_checkpoint(llama_dir), hf_checkpoint.load_checkpoint(sharded)
    tokens = torch.tensor([[0, 5, 9, 17, 33]])
    torch.testing.assert_close(parts(tokens), whole(tokens), atol=0, rtol=0)


def fake_hub_cache(root: Path, repo: str, files_from: Path | None, only: tuple[str, ...] | None = None) -> Path:
    """The Hugging Face cache layout for `repo`, holding `files_from`'s files (or only those named)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    commit = "0" * 40
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    for file in files_from.iterdir():
        if only is None or file.name in only:
            shutil.copy(file, snapshot / file.name)
    return snapshot


def run_offline(args: list[str], cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "circuitlab.cli", "run", *QUIET, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_pretrained_name_from_the_cache_runs_offline(tmp_path):
    """model.name=pythia-14m with its files (a tiny GPT-NeoX here) only in the local cache: HookedTransformer.from_pretrained
    loads it with no network; a cache with config.json but no weights, and a transformers-5 GPT-2 config that
    TransformerLens cannot read, are one line each that names the way out."""
    cache = tmp_path / "hub"
    fake_hub_cache(cache, "EleutherAI/pythia-14m", hf_fixtures.build("pythia", tmp_path / "pythia"))
    ok = run_offline(["model=gpt2-small", "model.name=pythia-14m", f"run.dir={tmp_path / 'run'}"], cache, tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "run" / "results.csv").stat().st_size > 0

    fake_hub_cache(cache, "google/gemma-2-9b", hf_fixtures.build("gemma2", tmp_path / "gemma2"), only=("config.json",))
    partial = run_offline(["model=gemma-2-9b", f"run.dir={tmp_path / 'run2'}"], cache, tmp_path)
    assert partial.returncode == 2 and "Traceback" not in partial.stderr
    assert partial.stderr.strip().splitlines() == [partial.stderr.strip()] and "holds google/gemma-2-9b's config but not all its weights" in partial.stderr

    snapshot = fake_hub_cache(cache, "gpt2", hf_fixtures.build("gpt2", tmp_path / "gpt2"))
    old = run_offline(["model=gpt2-small", f"run.dir={tmp_path / 'run3'}"], cache, tmp_path)
    assert old.returncode == 2 and "Traceback" not in old.stderr, old.stderr[-2000:]
    assert len(old.stderr.strip().splitlines()) == 1 and f"model=local model.path={snapshot}" in old.stderr
    local = run_offline(["model=local", f"model.path={snapshot}", f"run.dir={tmp_path / 'run4'}"], cache, tmp_path)
    assert local.returncode == 0, local.stderr[-2000:]
