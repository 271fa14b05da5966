"""TransformerLens HookedTransformer -> a Hugging Face GPT-2 checkpoint dir, with no network.

The embedded toy models are written this way (`config.json`, `model.safetensors`, tokenizer files), so
transformers, TransformerLens and pyvene can all load them; `hf_checkpoint` reads them back like any other
Hugging Face checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformer_lens import HookedTransformer


def export_gpt2_state_dict(model: HookedTransformer) -> dict[str, torch.Tensor]:
    """The Hugging Face GPT2LMHeadModel state dict of an *unprocessed* HookedTransformer whose unembedding
    bias is zero (GPT-2's lm_head has none)."""
    cfg = model.cfg
    if model.unembed.b_U.abs().max() > 0:
        raise ValueError("GPT-2 format has no unembedding bias; train with b_U frozen at zero")
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {
        "transformer.wte.weight": sd["embed.W_E"],
        "transformer.wpe.weight": sd["pos_embed.W_pos"],
        "transformer.ln_f.weight": sd["ln_final.w"],
        "transformer.ln_f.bias": sd["ln_final.b"],
        "lm_head.weight": sd["unembed.W_U"].T.contiguous(),
    }
    flat = lambda w: w.permute(1, 0, 2).reshape(cfg.d_model, -1)  # noqa: E731  [head, d_model, d_head] -> [d_model, head*d_head]
    for layer in range(cfg.n_layers):
        b, h = f"blocks.{layer}.", f"transformer.h.{layer}."
        out[h + "ln_1.weight"], out[h + "ln_1.bias"] = sd[b + "ln1.w"], sd[b + "ln1.b"]
        out[h + "ln_2.weight"], out[h + "ln_2.bias"] = sd[b + "ln2.w"], sd[b + "ln2.b"]
        out[h + "attn.c_attn.weight"] = torch.cat([flat(sd[b + f"attn.W_{m}"]) for m in "QKV"], dim=1)
        out[h + "attn.c_attn.bias"] = torch.cat([sd[b + f"attn.b_{m}"].reshape(-1) for m in "QKV"])
        out[h + "attn.c_proj.weight"] = sd[b + "attn.W_O"].reshape(-1, cfg.d_model)
        out[h + "attn.c_proj.bias"] = sd[b + "attn.b_O"]
        out[h + "mlp.c_fc.weight"], out[h + "mlp.c_fc.bias"] = sd[b + "mlp.W_in"], sd[b + "mlp.b_in"]
        out[h + "mlp.c_proj.weight"], out[h + "mlp.c_proj.bias"] = sd[b + "mlp.W_out"], sd[b + "mlp.b_out"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_config_of(model: HookedTransformer, **extra) -> dict:
    """A GPT-2 `config.json` for a HookedTransformer built with `tl_config_from_hf`-compatible settings."""
    cfg = model.cfg
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": cfg.n_layers,
        "n_embd": cfg.d_model,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_mlp,
        "n_positions": cfg.n_ctx,
        "vocab_size": cfg.d_vocab,
        "activation_function": cfg.act_fn,
        "layer_norm_epsilon": cfg.eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "tie_word_embeddings": False,
        **extra,
    }


def save_gpt2_dir(model: HookedTransformer, path: Path, tokenizer_json: str, special: dict[str, str], extra: dict) -> None:
    """Write `model` as a Hugging Face GPT-2 checkpoint dir with a fast tokenizer."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = {k: json.loads(tokenizer_json)["model"]["vocab"][v] for k, v in special.items()}
    config = hf_config_of(model, bos_token_id=ids["bos_token"], eos_token_id=ids["eos_token"], **extra)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(export_gpt2_state_dict(model), str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "tokenizer.json").write_text(tokenizer_json)
    tok_cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.cfg.n_ctx, **special}
    (path / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
