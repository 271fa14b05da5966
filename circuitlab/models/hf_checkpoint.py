"""Any local Hugging Face decoder checkpoint -> TransformerLens HookedTransformer, with no network.

A checkpoint dir is what `save_pretrained` or `hf download` writes: `config.json`, weights (`model.safetensors`,
sharded `model-0000x-of-0000n.safetensors` with their index, or `pytorch_model.bin`, read with
`weights_only=True`) and tokenizer files; or the prepared dir of a GGUF file (`gguf.py`: its config and tokenizer,
with the weights dequantized from the .gguf file at load).

TransformerLens 3.9 builds most configs from the Hugging Face one (`convert_hf_model_config`), but picks some
branches by the *path string* ("llama", "gemma" in a path take hard-coded branches that fail offline). So it is
handed a copy of `config.json` in a neutral directory named `checkpoint`. Gemma, Gemma-2 and Gemma 3 have no branch
built from a Hugging Face config in TransformerLens (only hard-coded configs per official name): theirs is built
here, field by field, from the one on disk.
Weights are converted by TransformerLens' own converters, from the model `transformers` loads.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import struct
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import torch

from circuitlab.errors import CircuitlabError
from circuitlab.models import gguf
from circuitlab.models.architectures import ALIASES, BUILT_HERE, SUPPORTED, TL_BUILT, supported_list  # noqa: F401  (re-exported)
from circuitlab.models.hf_logging import first_line, quiet  # noqa: F401  (re-exported)

log = logging.getLogger("circuitlab")

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json", "pytorch_model.bin")
POST_NORM_ARCHITECTURES = {"Olmo2ForCausalLM", "Olmo3ForCausalLM"}  # TransformerLens' own list: no fold_ln, no centring
PROCESSING_FLAGS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "refactor_factored_attn_matrices")
# TransformerLens' GPT-2 / GPT-J / GPT-Neo branches take d_mlp = 4 * d_model; these configs can say otherwise.
D_MLP_FIELDS = {"GPT2LMHeadModel": ("n_inner", "n_embd"), "GPTJForCausalLM": ("n_inner", "n_embd"), "GPTNeoForCausalLM": ("intermediate_size", "hidden_size")}
NEUTRAL_NAME = "checkpoint"
# Gemma configs built here cap the context as TransformerLens' own Gemma configs do: its rotary tables are
# n_ctx x d_head per layer (Gemma 3 270M claims 32k positions; 8192 keeps them at a few MB)
MAX_BUILT_CONTEXT = 8192


def read_config(directory: Path) -> dict:
    """`config.json` as a dict; one line naming the file when it is missing, not JSON or not an object."""
    file = Path(directory) / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CircuitlabError(f"{file}: no such file (a Hugging Face checkpoint dir has config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CircuitlabError(f"{file}: not a readable JSON file ({first_line(err)})") from None
    if not isinstance(data, dict):
        raise CircuitlabError(f"{file}: expected a JSON object, found {type(data).__name__}")
    return data


def architecture(hf: dict, directory: Path) -> str:
    """The checkpoint's architecture (`architectures[0]`, else the causal-LM class of its `model_type`)."""
    names = hf.get("architectures")
    if isinstance(names, list) and names and isinstance(names[0], str):
        name = names[0]
    else:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(str(hf.get("model_type")), f"model_type {hf.get('model_type')!r}")
    name = ALIASES.get(name, name)
    if name not in SUPPORTED:
        raise CircuitlabError(f"{Path(directory) / 'config.json'}: architecture {name} is not supported; supported: {supported_list()}")
    return name


def check_checkpoint(directory: Path) -> str:
    """Everything about a checkpoint dir that can be checked without loading it: config, architecture, weight
    files present and not truncated. Returns the architecture."""
    directory = Path(directory)
    arch = architecture(read_config(directory), directory)
    for weights in weight_files(directory):
        check_weight_file(weights)
    return arch


def weight_files(directory: Path) -> list[Path]:
    """The weight files the checkpoint consists of (every shard of a sharded one; a GGUF file's prepared dir: the
    .gguf file)."""
    if gguf.is_prepared(directory):
        return [gguf.source_file(directory)]
    for name in WEIGHT_FILES:
        file = directory / name
        if not file.is_file():
            continue
        if not name.endswith(".index.json"):
            return [file]
        try:
            index = json.loads(file.read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CircuitlabError(f"{file}: not a weight index (expected JSON with a weight_map; {first_line(err)})") from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise CircuitlabError(f"{file}: lists {len(missing)} shard(s) that are not there, first {missing[0]}")
        return [directory / s for s in shards]
    raise CircuitlabError(f"{directory}: no weights (expected one of {', '.join(WEIGHT_FILES)})")


def check_weight_file(file: Path) -> None:
    """A safetensors file's header is read and its tensors' extent checked against the file size; a .bin file must
    be a complete zip archive (what torch.save writes). Nothing is loaded."""
    size = file.stat().st_size
    if file.suffix == gguf.SUFFIX:
        gguf.check_header(file)  # a truncated one is refused when it is first prepared (it then has another digest)
    elif file.suffix == ".safetensors":
        with open(file, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise CircuitlabError(f"{file}: truncated or empty ({size} bytes; not a safetensors file)")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise CircuitlabError(f"{file}: truncated or damaged (its header claims {length} bytes, the file has {size})")
            try:
                header = json.loads(handle.read(length))
                end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
            except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError):
                raise CircuitlabError(f"{file}: damaged (its header is not safetensors JSON)") from None
        if 8 + length + end > size:
            raise CircuitlabError(f"{file}: truncated ({size} bytes, its tensors need {8 + length + end})")
    elif not zipfile.is_zipfile(file):
        raise CircuitlabError(f"{file}: truncated or not a torch.save file (read with weights_only=True)")


@contextmanager
def neutral_copy(hf: dict):
    """A temp dir holding only `checkpoint/config.json`, entered as the working directory, so TransformerLens sees
    the path string `checkpoint` and chooses its branch by the architecture in the config alone."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="circuitlab-config-") as tmp:
        (Path(tmp) / NEUTRAL_NAME).mkdir()
        (Path(tmp) / NEUTRAL_NAME / "config.json").write_text(json.dumps(hf))
        os.chdir(tmp)
        try:
            yield NEUTRAL_NAME
        finally:
            os.chdir(previous)


def tl_config(directory: Path, fold_ln: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The HookedTransformerConfig of a checkpoint dir (reads config.json only)."""
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    directory = Path(directory)
    hf = read_config(directory)
    arch = architecture(hf, directory)
    if arch in POST_NORM_ARCHITECTURES:
        fold_ln = False
    try:
        if arch == "Olmo2ForCausalLM":
            cfg = HookedTransformerConfig.from_dict(_olmo2_config(hf, directory, device, dtype))
        elif arch in BUILT_HERE:
            cfg = HookedTransformerConfig.from_dict(_gemma_config(hf, arch, fold_ln, device, dtype))
        else:
            hf = _filled(hf, arch)
            with neutral_copy(hf) as name, quiet():
                cfg = get_pretrained_model_config(name, fold_ln=fold_ln, device=device, dtype=dtype, local_files_only=True)
            if arch in D_MLP_FIELDS:
                inner, width = D_MLP_FIELDS[arch]
                cfg = HookedTransformerConfig.from_dict({**cfg.to_dict(), "d_mlp": hf.get(inner) or 4 * hf[width]})
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CircuitlabError(f"{directory / 'config.json'}: TransformerLens cannot build a {arch} config from it ({first_line(err)})") from None
    cfg.model_name = directory.name
    return cfg


def _filled(hf: dict, arch: str) -> dict:
    """Fields TransformerLens reads that `transformers` 5 no longer writes."""
    hf = {**hf, "architectures": [arch]}
    if arch == "GPT2LMHeadModel" and "n_ctx" not in hf:
        hf["n_ctx"] = hf.get("n_positions", 1024)
    return hf


def _gemma_config(hf: dict, arch: str, fold_ln: bool, device: str, dtype: torch.dtype) -> dict:
    """TransformerLens' Gemma / Gemma-2 config dict, read from the Hugging Face config instead of a model name."""
    d_head = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    cfg = {
        "d_model": hf["hidden_size"],
        "d_head": d_head,
        "n_heads": hf["num_attention_heads"],
        "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"],
        "n_ctx": hf.get("max_position_embeddings", 8192),
        "eps": hf.get("rms_norm_eps", 1e-6),
        "d_vocab": hf["vocab_size"],
        "act_fn": hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh",
        "initializer_range": hf.get("initializer_range", 0.02),
        "normalization_type": "RMSPre" if fold_ln else "RMS",
        "rotary_base": _rope_theta(hf),
        "rotary_dim": d_head,
        "positional_embedding_type": "rotary",
        "use_attn_scale": True,
        "n_key_value_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "gated_mlp": True,
        "final_rms": True,
        "original_architecture": arch,
        "init_weights": False,
        "default_prepend_bos": True,
        "device": device,
        "dtype": dtype,
        "from_checkpoint": False,
    }
    if arch in ("Gemma2ForCausalLM", "Gemma3ForCausalLM"):
        cfg.update(
            n_ctx=min(cfg["n_ctx"], MAX_BUILT_CONTEXT),
            attn_scale=float(hf.get("query_pre_attn_scalar") or d_head) ** 0.5,
            window_size=hf.get("sliding_window") or 4096,
            use_local_attn=True,
            attn_types=["local" if kind == "sliding_attention" else "global" for kind in _layer_types(hf, arch)],
            attn_scores_soft_cap=hf.get("attn_logit_softcapping") or -1.0,
            output_logits_soft_cap=hf.get("final_logit_softcapping") or -1.0,
            use_normalization_before_and_after=True,
        )
    if arch == "Gemma3ForCausalLM":  # per-head query / key norms; local layers rotate with their own base
        local_base = _rope_theta(hf, "sliding_attention")
        cfg.update(use_qk_norm=True, rotary_base=_rope_theta(hf, "full_attention"),
                   rotary_base_local=local_base if local_base != cfg["rotary_base"] else None)
    return cfg


def _olmo2_config(hf: dict, directory: Path, device: str, dtype: torch.dtype) -> dict:
    """TransformerLens' OLMo-2 config dict read from the Hugging Face config (TransformerLens 3.9 builds OLMo-2 only
    for the allenai checkpoints it names). Its weight converter splits keys and values per query head: grouped-query
    OLMo-2 checkpoints are refused."""
    heads = hf["num_attention_heads"]
    if (hf.get("num_key_value_heads") or heads) != heads:
        raise CircuitlabError(f"{directory / 'config.json'}: OLMo-2 with grouped-query attention (num_key_value_heads "
                              f"{hf['num_key_value_heads']} < num_attention_heads {heads}) is not supported by TransformerLens' converter")
    return {
        "d_model": hf["hidden_size"], "d_head": hf["hidden_size"] // heads, "n_heads": heads, "d_mlp": hf["intermediate_size"],
        "n_layers": hf["num_hidden_layers"], "n_ctx": min(hf.get("max_position_embeddings", 4096), MAX_BUILT_CONTEXT),
        "eps": hf.get("rms_norm_eps", 1e-6), "d_vocab": hf["vocab_size"], "act_fn": hf.get("hidden_act", "silu"),
        "initializer_range": hf.get("initializer_range", 0.02), "normalization_type": "RMS", "rotary_base": _rope_theta(hf),
        "attn_types": ["global"] * hf["num_hidden_layers"], "positional_embedding_type": "rotary", "gated_mlp": True,
        "final_rms": True, "tie_word_embeddings": bool(hf.get("tie_word_embeddings", False)), "original_architecture": "Olmo2ForCausalLM",
        "init_weights": False, "device": device, "dtype": dtype, "from_checkpoint": False,
    }


def _layer_types(hf: dict, arch: str) -> list[str]:
    """Each layer's attention kind: the config's `layer_types`, else the family's pattern (Gemma-2 alternates
    local / global; Gemma 3 has `sliding_window_pattern - 1` local layers before each global one)."""
    n_layers = hf["num_hidden_layers"]
    if hf.get("layer_types"):
        return list(hf["layer_types"])
    if arch == "Gemma3ForCausalLM":
        every = hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6
        return ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n_layers)]
    return ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]


def _rope_theta(hf: dict, kind: str | None = None) -> float:
    """The rotary base: transformers 5's `rope_parameters` (one, or one per attention kind, then `kind`'s or the
    first), else the older `rope_theta` (Gemma 3: `rope_local_base_freq` for local layers)."""
    params = hf.get("rope_parameters") or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):  # per attention kind
        chosen = params.get(kind) if kind in params else next(iter(params.values()))
        return float(chosen.get("rope_theta", 10000.0))
    if kind == "sliding_attention" and "rope_local_base_freq" in hf:
        return float(hf["rope_local_base_freq"])
    return float(hf.get("rope_theta", 10000.0))


def processing_flags(cfg, requested: dict) -> dict:
    """TransformerLens' weight-processing flags with its own guards applied (as `from_pretrained` does): no LN
    folding or centring for post-norm blocks, no `center_unembed` with a logit soft cap."""
    from transformer_lens.utilities.activation_functions import softcap_enabled

    flags = dict(requested)
    if cfg.original_architecture in POST_NORM_ARCHITECTURES:
        flags.update(fold_ln=False, center_writing_weights=False)
    if softcap_enabled(cfg.output_logits_soft_cap):
        flags["center_unembed"] = False
    for flag, value in requested.items():
        if value and not flags[flag]:
            log.info("model: %s=true does not apply to %s; left off", flag, cfg.original_architecture)
    return flags


def load_checkpoint(directory: Path, device: str = "cpu", dtype: torch.dtype = torch.float32, processing: dict | None = None):
    """A HookedTransformer of a local checkpoint dir, its weights processed in float32, then cast to `dtype`."""
    from transformers import AutoModelForCausalLM
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    directory = Path(directory)
    check_checkpoint(directory)
    flags = {flag: False for flag in PROCESSING_FLAGS} | dict(processing or {})
    cfg = tl_config(directory, fold_ln=False, device="cpu")  # norms with weights: `process_in_steps` folds them
    flags = processing_flags(cfg, flags)
    tokenizer = load_tokenizer(directory)
    with quiet():
        try:
            if gguf.is_prepared(directory):
                hf_model, info = gguf.load_hf_model(directory, _hf_config(directory))
            else:
                hf_model, info = AutoModelForCausalLM.from_pretrained(
                    str(directory), local_files_only=True, dtype=torch.float32, config=_hf_config(directory), output_loading_info=True
                )
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as err:
            reason = "tensor shapes differ from config.json" if "mismatched_sizes" in str(err) else first_line(err)
            raise CircuitlabError(f"{directory}: transformers could not load the weights ({reason})") from None
        missing = sorted(info.get("missing_keys") or [])
        if missing:  # transformers would fill them with random values
            raise CircuitlabError(f"{directory}: the weights lack {len(missing)} tensor(s) that config.json calls for, first {missing[0]}")
        hf_model.eval()
        state_dict = get_pretrained_state_dict(str(directory), cfg, hf_model=hf_model)
        del hf_model
        gc.collect()  # the transformers model's reference cycles hold tensors too
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state_dict, **{flag: False for flag in flags})  # empties state_dict as it loads
        del state_dict
        process_in_steps(model, flags)
    if dtype != torch.float32:
        model.to(dtype)
    if str(device) != "cpu":
        model.to(device)
    return model.eval()


def process_in_steps(model, flags: dict) -> None:
    """TransformerLens' weight processing of a loaded model, in three calls of its own `load_and_process_state_dict`
    on the model's weights: LN folding, then unembed centring, then the rest (writing-weight centring, value-bias
    folding, refactoring), the order it uses in one call (the centrings touch disjoint weights). Each of its steps
    copies the whole state dict; one call keeps two copies and the original alive at once, three calls one copy beside
    the model: peak memory twice the weights, not four times (the transformers model and the unprocessed state dict
    are gone before). The weights equal one call's to float rounding (tests/test_architectures.py)."""
    off = {flag: False for flag in flags}
    steps = [{"fold_ln": flags["fold_ln"]}, {"center_unembed": flags["center_unembed"]},
             {flag: flags[flag] for flag in ("center_writing_weights", "fold_value_biases", "refactor_factored_attn_matrices")}]
    for step in steps:
        if any(step.values()):
            model.load_and_process_state_dict(model.state_dict(), **(off | step))


def load_tokenizer(directory: Path):
    """The checkpoint's tokenizer, from local files only; one line when its files are missing or damaged."""
    from transformers import AutoTokenizer

    with quiet():
        try:
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as err:  # noqa: BLE001  transformers raises many kinds for missing or damaged files
            raise CircuitlabError(f"{directory}: no usable tokenizer there (tokenizer.json / tokenizer_config.json: {first_line(err)})") from None


def _hf_config(directory: Path):
    """The transformers config, with the architecture's alias resolved (a GPT2Model dir loads as GPT2LMHeadModel)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    config.architectures = [architecture(read_config(directory), directory)]
    return config
