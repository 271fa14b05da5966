"""Tiny GGUF files written here with the `gguf` package's `GGUFWriter`, laid out as llama.cpp's converter
(convert_hf_to_gguf.py) lays out a real checkpoint, from a tiny random-weight transformers model that stays in
memory as the reference (no download, nothing from circuitlab on the writing side).

What llama.cpp does to a checkpoint, done here by hand:
- tensor names: gguf-py's own HF -> GGUF map (`get_tensor_name_map`): `token_embd`, `blk.N.attn_q`, `output_norm`, ...;
- Llama: the query and key projections' rows permuted into llama.cpp's rotary layout (`_permute`, llama.cpp's
  `LlamaModel.permute`; transformers' reader undoes it);
- Gemma 3: every norm weight stored as 1 + w (llama.cpp multiplies by the weight, transformers by 1 + w), the
  unembedding tied to the embedding (no `output` tensor);
- hyper-parameters under `<arch>.<key>` (what transformers' GGUF config mapping reads), float32 tensors, one Q8_0
  tensor (`QUANTIZED`: the reference holds its dequantized values, so the two still agree to float rounding);
- tokenizer metadata in which every IOI word is one token: Llama's `tokenizer.ggml.model = "gpt2"` (tokens, token
  types and merges of the byte-level BPE `hf_fixtures.write_tokenizer(byte_level=True)` trains on the IOI words, as
  SmolLM2's file has), Gemma 3's "llama" (a sentencepiece-style vocabulary with scores and no merges, `<bos>` added,
  as Gemma's files have; transformers builds Gemma's tokenizer from it).

The reference model is built with the values the GGUF metadata can state and transformers' defaults for the rest
(Gemma 3: `query_pre_attn_scalar` 256, local rotary base 10k, one global layer in six: so the Gemma 3 fixture has 6
layers, to hold one global layer). `damaged_*` write the broken variants the bad-input tests use.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tests import hf_fixtures

ARCHITECTURES = ("llama", "gemma3")
N_LAYERS = {"llama": 2, "gemma3": 6}
QUANTIZED = {"llama": "blk.0.ffn_down.weight", "gemma3": "blk.1.ffn_up.weight"}  # written as Q8_0
TOKENIZER = {"llama": "gpt2", "gemma3": "llama"}  # tokenizer.ggml.model, as llama.cpp writes these families
CONTEXT = 64
END_OF_TEXT = "<|endoftext|>"
SPACE = "\u2581"
NORMAL, UNKNOWN, CONTROL = 1, 2, 3  # gguf.TokenType


@dataclass
class Written:
    """A tiny GGUF file and the transformers model it was written from (eager attention, float32)."""

    file: Path
    reference: torch.nn.Module


def _hf_config(arch: str, tokenizer: dict):
    import transformers as tf

    ids = {key: value for key, value in tokenizer["ids"].items() if key != "unk_token_id"}
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS[arch], num_attention_heads=4,
                 max_position_embeddings=CONTEXT, vocab_size=len(tokenizer["tokens"]), **ids)
    if arch == "llama":  # grouped-query attention: 4 query heads over 2 key / value heads
        return tf.LlamaConfig(**shape, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=False)
    if arch == "gemma3":  # window 8: shorter than the IOI prompts
        return tf.Gemma3TextConfig(**shape, num_key_value_heads=1, head_dim=16, sliding_window=8, rms_norm_eps=1e-6,
                                   rope_theta=1e6, tie_word_embeddings=True)
    raise KeyError(arch)


def reference_model(arch: str, tokenizer: dict, seed: int = 0, weight_scale: float = 4.0):
    """A random-weight transformers model (eager, float32), perturbed as hf_fixtures.build does: matrices scaled
    up (the unembedding more), norm weights off their default."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_hf_config(arch, tokenizer), attn_implementation="eager", dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():  # a tied unembedding is the embedding: listed once
            if param.ndim >= 2:
                param.mul_(weight_scale * (hf_fixtures.LM_HEAD_SCALE if name.startswith("lm_head") else 1.0))
            else:
                param.add_(0.1 * torch.randn_like(param))
    return model


def tokenizer_metadata(kind: str = "gpt2") -> dict:
    """The `tokenizer.ggml.*` values of a tokenizer in which every IOI word is one token, as llama.cpp stores it:
    "gpt2": the byte-level BPE hf_fixtures trains (tokens, token types, merges; `<|endoftext|>` = 0 is BOS, EOS
    and padding); "llama": a sentencepiece-style vocabulary as Gemma's (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3,
    then pieces with "▁" for a space, best first; no merges: transformers rebuilds them from the order)."""
    if kind == "llama":
        return _sentencepiece_metadata()
    with tempfile.TemporaryDirectory() as scratch:
        hf_fixtures.write_tokenizer(Path(scratch), byte_level=True)
        model = json.loads((Path(scratch) / "tokenizer.json").read_text())["model"]
    tokens = [token for token, _ in sorted(model["vocab"].items(), key=lambda item: item[1])]
    assert tokens.index(END_OF_TEXT) == 0
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [CONTROL if token == END_OF_TEXT else NORMAL for token in tokens]
    ids = dict(bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return {"model": "gpt2", "tokens": tokens, "types": types, "merges": merges, "ids": ids}


def _sentencepiece_metadata() -> dict:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    from circuitlab.tasks import ioi

    words = ioi.vocabulary()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    tokenizer.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=specials, show_progress=False)
    tokenizer.train_from_iterator([" " + " ".join(words), *words], trainer)
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    assert tokens[:4] == specials
    types = [CONTROL, CONTROL, CONTROL, UNKNOWN] + [NORMAL] * (len(tokens) - 4)
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, unk_token_id=3)
    return {"model": "llama", "tokens": tokens, "types": types, "scores": [-float(i) for i in range(len(tokens))], "ids": ids}


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: each head's rows from (pairs of halves) to interleaved rotary pairs."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    return weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def gguf_tensors(arch: str, model) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array of every weight, transformed as llama.cpp's converter does."""
    import gguf

    cfg = model.config
    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), cfg.num_hidden_layers)
    tensors = {}
    for hf_name, param in model.state_dict().items():
        if arch == "gemma3" and hf_name == "lm_head.weight":
            continue  # tied: llama.cpp writes no output tensor
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        assert name is not None, hf_name
        data = param.detach().float().numpy().copy()
        if arch == "llama" and stem.endswith("self_attn.q_proj"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif arch == "llama" and stem.endswith("self_attn.k_proj"):
            data = _permute(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        if arch == "gemma3" and stem.endswith("norm"):
            data = data + 1.0
        tensors[f"{name}.{suffix}"] = data
    return tensors


def _hyper_parameters(writer, arch: str, cfg) -> None:
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    if arch == "llama":
        writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
        writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    else:
        writer.add_key_length(cfg.head_dim)
        writer.add_value_length(cfg.head_dim)
        writer.add_rope_freq_base(cfg.rope_parameters["full_attention"]["rope_theta"])
        writer.add_sliding_window(cfg.sliding_window)


def _tokenizer_keys(writer, tokenizer: dict) -> None:
    writer.add_tokenizer_model(tokenizer["model"])
    writer.add_token_list(tokenizer["tokens"])
    writer.add_token_types(tokenizer["types"])
    if tokenizer["model"] == "gpt2":
        writer.add_tokenizer_pre("default")
        writer.add_token_merges(tokenizer["merges"])
    else:  # sentencepiece, as llama.cpp writes Gemma's: scores, BOS added, no space prefix
        writer.add_token_scores(tokenizer["scores"])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(False)
    ids = tokenizer["ids"]
    writer.add_bos_token_id(ids["bos_token_id"])
    writer.add_eos_token_id(ids["eos_token_id"])
    writer.add_pad_token_id(ids["pad_token_id"])
    if "unk_token_id" in ids:
        writer.add_unk_token_id(ids["unk_token_id"])


def write_gguf(file: Path, arch: str, tensors: dict[str, np.ndarray], cfg, tokenizer: dict | None,
               quantized: str | None = None, architecture: str | None = None) -> Path:
    """One .gguf file: `architecture` overrides general.architecture (and the key prefix); `tokenizer` None
    leaves out the tokenizer metadata; `quantized` names the tensor written as Q8_0 (its values must already be
    Q8_0-representable, see `build`)."""
    import gguf

    logging.getLogger("gguf").setLevel(logging.WARNING)  # the writer logs each file at INFO
    arch_name = architecture or arch
    writer = gguf.GGUFWriter(str(file), arch_name)
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _hyper_parameters(writer, arch, cfg)
    if tokenizer is not None:
        _tokenizer_keys(writer, tokenizer)
    for name, data in tensors.items():
        if name == quantized:
            writer.add_tensor(name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return file


def _round_through_q8_0(model, arch: str, gguf_name: str) -> None:
    """Give the reference the values a Q8_0 tensor dequantizes to (so the file and the reference hold the same
    weights); the HF parameter is found through the same name map."""
    import gguf

    names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), model.config.num_hidden_layers)
    for hf_name, param in model.named_parameters():
        stem, suffix = hf_name.rsplit(".", 1)
        if f"{names.get_name(stem)}.{suffix}" == gguf_name:
            quant = gguf.GGMLQuantizationType.Q8_0
            rounded = gguf.quants.dequantize(gguf.quants.quantize(param.detach().numpy(), quant), quant)
            with torch.no_grad():
                assert not torch.equal(torch.from_numpy(rounded), param)  # Q8_0 does change the values
                param.copy_(torch.from_numpy(rounded))
            return
    raise KeyError(gguf_name)


def build(arch: str, directory: Path, seed: int = 0, quantize: bool = True, name: str | None = None) -> Written:
    """Write `<directory>/<name or tiny-arch>.gguf` of a fresh random model; returns it with its reference model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer_metadata(TOKENIZER[arch])
    model = reference_model(arch, tokenizer, seed)
    quantized = QUANTIZED[arch] if quantize else None
    if quantized:
        _round_through_q8_0(model, arch, quantized)
    file = directory / f"{name or 'tiny-' + arch}.gguf"
    write_gguf(file, arch, gguf_tensors(arch, model), model.config, tokenizer, quantized)
    return Written(file, model)


# ---- damaged variants (each a new file; the source is left as it is) ----


def damaged_truncated(source: Path, target: Path) -> Path:
    """Cut in the middle of the largest tensor's data (the header, metadata and tensor index are whole)."""
    from gguf import GGUFReader

    largest = max(GGUFReader(str(source)).tensors, key=lambda t: t.n_bytes)
    data = Path(source).read_bytes()
    target.write_bytes(data[: largest.data_offset + largest.n_bytes // 2])
    return target


def damaged_magic(source: Path, target: Path) -> Path:
    """The first four bytes are not `GGUF` (here: the old GGML magic)."""
    data = Path(source).read_bytes()
    target.write_bytes(b"ggml" + data[4:])
    return target


def without_tokenizer(arch: str, target: Path, seed: int = 0) -> Path:
    """A whole GGUF file with no `tokenizer.ggml.*` metadata."""
    tokenizer = tokenizer_metadata(TOKENIZER[arch])
    model = reference_model(arch, tokenizer, seed)
    return write_gguf(target, arch, gguf_tensors(arch, model), model.config, tokenizer=None)


def unsupported_architecture(target: Path, architecture: str = "rwkv6", seed: int = 0) -> Path:
    """A whole GGUF file (Llama's tensors and tokenizer) that says `general.architecture = architecture`."""
    tokenizer = tokenizer_metadata(TOKENIZER["llama"])
    model = reference_model("llama", tokenizer, seed)
    return write_gguf(target, "llama", gguf_tensors("llama", model), model.config, tokenizer, architecture=architecture)


def two_files(source: Path, directory: Path) -> Path:
    """A dir holding two .gguf files (copies of `source`)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("a.gguf", "b.gguf"):
        (directory / name).write_bytes(Path(source).read_bytes())
    return directory
