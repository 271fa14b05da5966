"""Tiny random-weight checkpoints of real architectures, written by `transformers.save_pretrained` (no download).

Each has 2 layers, d_model 64, grouped-query attention where the architecture has it, a sliding window shorter
than the IOI prompts where it has one, and a tokenizer in which every IOI word is one token: the embedded toy-ioi
word-level one, or for Qwen2 (whose model type `transformers` 5 always loads with its own byte-level
Qwen2Tokenizer) a byte-level BPE trained here on the IOI words. Weights are scaled up so that logits (and
Gemma-2's attention scores) reach the soft caps.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from circuitlab.models import loading

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
BYTE_LEVEL = {"qwen2"}
LM_HEAD_SCALE = 16.0  # logits of about 40: into Gemma-2's final soft cap (30), where tanh bends
TOKEN_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _config(arch: str, vocab: int):
    """The transformers config of one fixture."""
    import transformers as tf

    shape = {**SHAPE, "vocab_size": vocab}
    if arch == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64, vocab_size=vocab, **TOKEN_IDS)
    if arch == "gpt_neo":
        return tf.GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, max_position_embeddings=64, vocab_size=vocab,
                               attention_types=[[["global", "local"], 1]], window_size=8, **TOKEN_IDS)
    if arch == "gptj":
        return tf.GPTJConfig(n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64, rotary_dim=8, vocab_size=vocab, **TOKEN_IDS)
    if arch == "pythia":
        return tf.GPTNeoXConfig(**shape, rotary_pct=0.25, use_parallel_residual=True, **TOKEN_IDS)
    if arch == "llama":
        return tf.LlamaConfig(**shape, num_key_value_heads=2, **TOKEN_IDS)
    if arch == "mistral":
        return tf.MistralConfig(**shape, num_key_value_heads=2, sliding_window=8, **TOKEN_IDS)
    if arch == "qwen2":
        return tf.Qwen2Config(**shape, num_key_value_heads=2, **TOKEN_IDS)
    if arch == "qwen3":
        return tf.Qwen3Config(**shape, num_key_value_heads=2, head_dim=16, **TOKEN_IDS)
    if arch == "phi3":
        return tf.Phi3Config(**shape, num_key_value_heads=4, **TOKEN_IDS)
    if arch == "opt":
        return tf.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, max_position_embeddings=64,
                            word_embed_proj_dim=64, vocab_size=vocab, **TOKEN_IDS)
    if arch == "gemma":
        return tf.GemmaConfig(**shape, num_key_value_heads=1, head_dim=16, hidden_activation="gelu_pytorch_tanh", **TOKEN_IDS)
    if arch == "gemma2":
        return tf.Gemma2Config(**shape, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                               attn_logit_softcapping=5.0, final_logit_softcapping=30.0, **TOKEN_IDS)
    if arch == "gemma3":  # one local layer (window 8, base 10k) then one global (base 1M), as Gemma 3's own pattern
        rope = {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}, "full_attention": {"rope_type": "default", "rope_theta": 1e6}}
        return tf.Gemma3TextConfig(**shape, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                                   layer_types=["sliding_attention", "full_attention"], rope_parameters=rope, **TOKEN_IDS)
    if arch == "olmo2":  # norms after attention and MLP only, query / key norms over all heads at once
        return tf.Olmo2Config(**shape, **TOKEN_IDS)
    raise KeyError(arch)


ARCHITECTURES = ("gpt2", "gpt_neo", "gptj", "pythia", "llama", "mistral", "qwen2", "qwen3", "phi3", "opt", "gemma", "gemma2", "gemma3", "olmo2")
POST_NORM = ("gemma2", "gemma3", "olmo2")  # norms after attention and MLP (Gemma: before them too)


def build(arch: str, path: Path, seed: int = 0, weight_scale: float = 4.0, max_shard_size: str | None = None) -> Path:
    """Write a random-weight checkpoint of `arch` to `path` (returned); `weight_scale` multiplies every matrix;
    `max_shard_size` (e.g. "40KB") writes it in shards with their index."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(path, byte_level=arch in BYTE_LEVEL)
    torch.manual_seed(seed)
    config = _config(arch, vocab)
    config.tie_word_embeddings = False
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                param.mul_(weight_scale * (LM_HEAD_SCALE if name.startswith("lm_head") else 1.0))
            elif "norm" in name or "ln" in name:
                param.add_(0.1 * torch.randn_like(param))  # norm weights off their default, so folding them matters
            else:
                param.normal_(0.0, 0.05)  # biases
    model.save_pretrained(str(path), **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    return path


def write_tokenizer(path: Path, byte_level: bool = False) -> int:
    """Tokenizer files in `path`; returns the vocabulary size."""
    if not byte_level:
        for name in TOKENIZER_FILES:
            shutil.copy(loading.EMBEDDED_DIR / "toy-ioi" / name, path / name)
        return len(json.loads((path / "tokenizer.json").read_text())["model"]["vocab"])
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from circuitlab.tasks import ioi

    words = ioi.vocabulary()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    end = "<|endoftext|>"
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=[end], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator([" " + " ".join(words), *words], trainer)  # each word with and without a leading space
    tokenizer.save(str(path / "tokenizer.json"))
    special = {"bos_token": end, "eos_token": end, "pad_token": end}
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer", **special}))
    return tokenizer.get_vocab_size()


def hf_model(path: Path):
    """The checkpoint in transformers, eager attention, float32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, attn_implementation="eager", dtype=torch.float32).eval()
