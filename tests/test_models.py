"""Embedded toy model: held-out accuracy, Hugging Face format, local-checkpoint loading, seeded retraining."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from circuitlab.config import ModelConfig
from circuitlab.models import hf_checkpoint, hf_gpt2, loading, toy

TOY_DIR = loading.EMBEDDED_DIR / "toy-ioi"
DEFAULT_PROCESSING = dict(fold_ln=True, center_writing_weights=True, center_unembed=True, fold_value_biases=True)


def test_toy_ioi_heldout_accuracy(toy_model):
    """>= 98% on name pairs never seen in training, over every template and both patterns."""
    recipe = toy.RECIPES["toy-ioi"]
    pairs = toy.ioi_prompt_pairs(recipe, toy_model.tokenizer, 1000, heldout=True, seed=12345)
    assert toy.accuracy(toy_model, pairs) >= 0.98


def test_loading_is_memoised(tmp_path):
    """One load per process for the same config and files; a checkpoint whose files changed is loaded again."""
    cfg = ModelConfig(source="embedded", name="toy-ioi")
    assert loading.load_model(cfg, device="cpu") is loading.load_model(cfg, device="cpu")
    local = ModelConfig(source="local", name="local", path=str(tmp_path / "ckpt"))
    shutil.copytree(TOY_DIR, tmp_path / "ckpt")
    first = loading.load_model(local, device="cpu")
    assert loading.load_model(local, device="cpu") is first
    state = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    state["lm_head.weight"] = state["lm_head.weight"] * 2
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "ckpt" / "model.safetensors"), metadata={"format": "pt"})
    assert loading.load_model(local, device="cpu") is not first


def test_transformers_loads_the_same_network(toy_model, toy_pairs):
    """The shipped files are a plain Hugging Face GPT-2 checkpoint (what pyvene loads)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(TOY_DIR), local_files_only=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(TOY_DIR), local_files_only=True)
    assert tokenizer(" Mary", add_special_tokens=False)["input_ids"] == toy_model.tokenizer(" Mary", add_special_tokens=False)["input_ids"]
    hf_logits = hf(toy_pairs.clean_tokens).logits
    tl_logits = toy_model(toy_pairs.clean_tokens)
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731  (TransformerLens centres the unembedding)
    torch.testing.assert_close(centre(hf_logits), centre(tl_logits), atol=1e-3, rtol=0)


def test_local_checkpoint_dir(tmp_path, toy_model, toy_pairs):
    local = tmp_path / "ckpt"
    shutil.copytree(TOY_DIR, local)
    model = loading.load_model(ModelConfig(source="local", name="local", path=str(local)), device="cpu")
    torch.testing.assert_close(model(toy_pairs.clean_tokens), toy_model(toy_pairs.clean_tokens))
    assert loading.model_shape(ModelConfig(source="local", path=str(local))).n_layers == 2


def test_local_checkpoint_with_pytorch_bin(tmp_path, toy_model, toy_pairs):
    """A .bin checkpoint is read with weights_only=True (transformers' safe loader)."""
    local = tmp_path / "bin"
    shutil.copytree(TOY_DIR, local)
    state = load_file(str(local / "model.safetensors"))
    (local / "model.safetensors").unlink()
    torch.save(state, local / "pytorch_model.bin")
    model = hf_checkpoint.load_checkpoint(local, processing=DEFAULT_PROCESSING)
    torch.testing.assert_close(model(toy_pairs.clean_tokens), toy_model(toy_pairs.clean_tokens))


def test_export_roundtrip(tmp_path):
    """A freshly initialised model exported to GPT-2 format and reloaded computes the same logits."""
    from transformer_lens import HookedTransformer

    from circuitlab.tasks import ioi

    tokenizer_json = toy.word_level_tokenizer_json(ioi.vocabulary())
    d_vocab = len(toy.fast_tokenizer(tokenizer_json))
    torch.manual_seed(0)
    model = HookedTransformer(toy._model_config(toy.RECIPES["toy-ioi"], d_vocab))
    hf_gpt2.save_gpt2_dir(model, tmp_path, tokenizer_json, toy.SPECIAL_TOKENS, extra={})
    no_processing = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False)
    reloaded = hf_checkpoint.load_checkpoint(tmp_path, processing=no_processing)
    tokens = torch.randint(0, d_vocab, (3, 12))
    torch.testing.assert_close(reloaded(tokens), model(tokens), atol=1e-5, rtol=1e-5)


def test_retraining_is_seeded(tmp_path):
    """Two short runs of the recipe give bitwise-identical weights."""
    a = toy.train_toy("toy-ioi", tmp_path / "a", steps=3, progress=False)
    b = toy.train_toy("toy-ioi", tmp_path / "b", steps=3, progress=False)
    assert a["final_loss"] == b["final_loss"]
    wa, wb = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow
def test_recipe_reproduces_shipped_weights(tmp_path):
    """`circuitlab train-toy task=ioi` reproduces the shipped toy-ioi (same torch build and CPU)."""
    report = toy.train_toy("toy-ioi", tmp_path, progress=False)
    shipped = json.loads((TOY_DIR / "recipe.json").read_text())
    assert report["heldout_pair_accuracy"] >= 0.98
    assert report["recipe"] == shipped["recipe"]
    ours, theirs = load_file(str(tmp_path / "model.safetensors")), load_file(str(TOY_DIR / "model.safetensors"))
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-3)
