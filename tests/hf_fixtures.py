"""Tiny random-weight checkpoints of real architectures, written by `transformers.save_pretrained` (no download).

Each has 2 layers, d_model 64, grouped-query attention where the architecture has it, a sliding window shorter
than the IOI prompts where it has one, and the embedded toy-ioi word-level tokenizer, so every task word is a
real token. Weights are scaled up so that logits (and Gemma-2's attention scores) reach the soft caps.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from circuitlab.models import loading

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
VOCAB = 108  # the toy-ioi tokenizer's
SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64, vocab_size=VOCAB)
LM_HEAD_SCALE = 16.0  # logits of about 40: into Gemma-2's final soft cap (30), where tanh bends
TOKEN_IDS = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)


def _config(arch: str):
    """The transformers config of one fixture."""
    import transformers as tf

    if arch == "gpt2":
        return tf.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64, vocab_size=VOCAB, **TOKEN_IDS)
    if arch == "gpt_neo":
        return tf.GPTNeoConfig(num_layers=2, hidden_size=64, num_heads=4, intermediate_size=128, max_position_embeddings=64, vocab_size=VOCAB,
                               attention_types=[[["global", "local"], 1]], window_size=8, **TOKEN_IDS)
    if arch == "gptj":
        return tf.GPTJConfig(n_layer=2, n_embd=64, n_head=4, n_inner=128, n_positions=64, rotary_dim=8, vocab_size=VOCAB, **TOKEN_IDS)
    if arch == "pythia":
        return tf.GPTNeoXConfig(**SHAPE, rotary_pct=0.25, use_parallel_residual=True, **TOKEN_IDS)
    if arch == "llama":
        return tf.LlamaConfig(**SHAPE, num_key_value_heads=2, **TOKEN_IDS)
    if arch == "mistral":
        return tf.MistralConfig(**SHAPE, num_key_value_heads=2, sliding_window=8, **TOKEN_IDS)
    if arch == "qwen2":
        return tf.Qwen2Config(**SHAPE, num_key_value_heads=2, **TOKEN_IDS)
    if arch == "qwen3":
        return tf.Qwen3Config(**SHAPE, num_key_value_heads=2, head_dim=16, **TOKEN_IDS)
    if arch == "phi3":
        return tf.Phi3Config(**SHAPE, num_key_value_heads=4, **TOKEN_IDS)
    if arch == "opt":
        return tf.OPTConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, ffn_dim=128, max_position_embeddings=64,
                            word_embed_proj_dim=64, vocab_size=VOCAB, **TOKEN_IDS)
    if arch == "gemma":
        return tf.GemmaConfig(**SHAPE, num_key_value_heads=1, head_dim=16, hidden_activation="gelu_pytorch_tanh", **TOKEN_IDS)
    if arch == "gemma2":
        return tf.Gemma2Config(**SHAPE, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                               attn_logit_softcapping=5.0, final_logit_softcapping=30.0, **TOKEN_IDS)
    raise KeyError(arch)


ARCHITECTURES = ("gpt2", "gpt_neo", "gptj", "pythia", "llama", "mistral", "qwen2", "qwen3", "phi3", "opt", "gemma", "gemma2")
# The ones that must stay in the fast suite; the others join them in the slow run.
CORE = ("gpt2", "pythia", "llama", "mistral", "qwen2", "gemma2")


def build(arch: str, path: Path, seed: int = 0, weight_scale: float = 4.0) -> Path:
    """Write a random-weight checkpoint of `arch` to `path` (returned); `weight_scale` multiplies every matrix."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = _config(arch)
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
    path = Path(path)
    model.save_pretrained(str(path))
    for name in TOKENIZER_FILES:
        shutil.copy(loading.EMBEDDED_DIR / "toy-ioi" / name, path / name)
    return path


def hf_model(path: Path):
    """The checkpoint in transformers, eager attention, float32."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, attn_implementation="eager", dtype=torch.float32).eval()
