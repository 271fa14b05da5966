"""Model loading: embedded toy models, local Hugging Face checkpoints of any supported architecture
(`hf_checkpoint`), GGUF files (`gguf`), real models shipped as pip packages (`packaged`), InterpBench-style
checkpoints, and TransformerLens pretrained names.

Every loader returns a HookedTransformer in eval mode with gradients off. Loads are memoised per process, so
a multirun over tasks or sweeps reuses the model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.models import gguf, hf_checkpoint, interpbench, packaged

EMBEDDED_DIR = Path(__file__).parent / "embedded"
SOURCES = ("embedded", "pretrained", "local", "package")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
PROCESSING_FLAGS = hf_checkpoint.PROCESSING_FLAGS


def embedded_models() -> list[str]:
    if not EMBEDDED_DIR.exists():
        return []
    return sorted(p.name for p in EMBEDDED_DIR.iterdir() if (p / "config.json").exists() or interpbench.is_checkpoint(p))


@dataclass(frozen=True)
class ModelShape:
    """What the config validator needs to know about a model before loading its weights."""

    n_layers: int
    n_heads: int
    d_model: int
    n_ctx: int
    d_head: int
    d_mlp: int | None = None  # None: attention-only
    n_key_value_heads: int | None = None  # grouped-query attention: the heads of k and v; None: n_heads
    parallel_attn_mlp: bool = False  # attention and MLP read the same residual stream (GPT-J, NeoX): no resid_mid
    normalization_type: str | None = "LN"  # None: no norms, so no attn_in / mlp_in
    d_vocab: int | None = None  # rows of the embedding: every token id must be below it
    # what decides, before the weights load, whether a method can read the model (e.g. the edge methods' additivity)
    original_architecture: str | None = None
    use_normalization_before_and_after: bool = False
    positional_embedding_type: str = "standard"
    model_name: str = ""

    @classmethod
    def of(cls, cfg) -> "ModelShape":
        """The shape of a HookedTransformerConfig (or an object / dict with its field names)."""
        get = cfg.get if isinstance(cfg, dict) else lambda key, default=None: getattr(cfg, key, default)
        d_mlp = None if get("attn_only", False) else get("d_mlp")
        return cls(get("n_layers"), get("n_heads"), get("d_model"), get("n_ctx"), get("d_head"), d_mlp,
                   get("n_key_value_heads"), bool(get("parallel_attn_mlp", False)), get("normalization_type", "LN"), get("d_vocab"),
                   get("original_architecture"), bool(get("use_normalization_before_and_after", False)),
                   get("positional_embedding_type", "standard") or "standard", str(get("model_name", "") or ""))


def resolve_device(name: str) -> str:
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    return name


def checkpoint_dir(model_cfg) -> Path:
    """The directory of an embedded, local or packaged checkpoint (for a GGUF file: its prepared dir, `gguf.py`);
    raises a one-line error when it is missing."""
    if model_cfg.source == "embedded":
        available = embedded_models()
        if model_cfg.name not in available:
            raise ConfigError("model.name", model_cfg.name, available, hint="embedded models")
        return EMBEDDED_DIR / model_cfg.name
    if model_cfg.source == "package":
        return gguf.prepare(packaged.gguf_file(model_cfg.name))
    if not model_cfg.path:
        raise ConfigError("model.path", None, "a directory with config.json, weights and tokenizer files, or a .gguf file")
    path = Path(model_cfg.path).expanduser()
    gguf_file = gguf.find_file(path)
    if gguf_file is not None:
        return gguf.prepare(gguf_file)
    if not path.is_dir():
        raise CircuitlabError(
            f"model.path={model_cfg.path}: no such directory (expected a Hugging Face checkpoint dir: config.json, "
            "weights (*.safetensors or pytorch_model.bin), tokenizer files; a .gguf file; or an InterpBench-style dir)"
        )
    if interpbench.is_checkpoint(path):
        interpbench.require_weights(path)
        return path
    hf_checkpoint.check_checkpoint(path)
    return path


def official_name(name: str) -> str:
    from transformer_lens.loading_from_pretrained import get_official_model_name

    try:
        return get_official_model_name(name)
    except ValueError:
        raise ConfigError("model.name", name, "a TransformerLens model name (e.g. gpt2-small, pythia-70m, gemma-2-2b)") from None


def validate_model_config(model_cfg) -> None:
    """Checks that need no download: the source, the name or path, the dtype."""
    if model_cfg.source not in SOURCES:
        raise ConfigError("model.source", model_cfg.source, SOURCES)
    if model_cfg.dtype not in DTYPES:
        raise ConfigError("model.dtype", model_cfg.dtype, DTYPES)
    if model_cfg.source == "pretrained":
        official_name(model_cfg.name)
    else:
        directory = checkpoint_dir(model_cfg)
        if interpbench.is_checkpoint(directory):
            interpbench.read_config(directory, bool(getattr(model_cfg, "allow_pickle", False)))


def model_shape(model_cfg) -> ModelShape:
    """The model's shape from its config alone (no weights)."""
    if model_cfg.source == "pretrained":
        return ModelShape.of(pretrained_config(model_cfg.name))
    directory = checkpoint_dir(model_cfg)
    if interpbench.is_checkpoint(directory):
        tl = interpbench.read_config(directory, bool(getattr(model_cfg, "allow_pickle", False)))
        return ModelShape.of(tl)
    return ModelShape.of(hf_checkpoint.tl_config(directory))


def load_tokenizer(model_cfg):
    """The model's tokenizer, loaded without the weights."""
    if model_cfg.source == "pretrained":
        from transformers import AutoTokenizer

        tokenizer_name = pretrained_config(model_cfg.name).tokenizer_name
        with pretrained_errors(model_cfg.name):
            return AutoTokenizer.from_pretrained(tokenizer_name)
    directory = checkpoint_dir(model_cfg)
    if interpbench.is_checkpoint(directory) and not (directory / "tokenizer.json").is_file():
        return interpbench.IdTokenizer()
    return hf_checkpoint.load_tokenizer(directory)


def ensure_hub_or_cache(name: str) -> None:
    """Fail fast, in one line, when a pretrained model is neither downloadable nor whole in the local cache. With
    the hub out of reach and the files cached, the Hugging Face libraries are put in offline mode (no retries)."""
    repo = official_name(name)
    if os.environ.get("HF_HUB_OFFLINE") != "1" and _hub_reachable():
        return
    snapshot = cached_snapshot(repo)
    route = f"download it where there is network (hf download {repo} --local-dir DIR) and run with model=local model.path=DIR"
    if snapshot is None:
        raise CircuitlabError(f"model.name={name}: the Hugging Face hub cannot be reached and {repo} is not in the local cache; {route}")
    try:
        hf_checkpoint.weight_files(snapshot)
    except CircuitlabError:
        raise CircuitlabError(f"model.name={name}: the Hugging Face hub cannot be reached and the local cache holds {repo}'s config "
                              f"but not all its weights ({snapshot}); {route}") from None
    _go_offline()


@lru_cache(maxsize=8)
def pretrained_config(name: str):
    """TransformerLens' config of a pretrained name (from the hub, or the local cache when offline); read once per
    process (planning asks for the shape and the tokenizer's name)."""
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    ensure_hub_or_cache(name)
    with pretrained_errors(name), hf_checkpoint.quiet():
        return get_pretrained_model_config(official_name(name))


@contextmanager
def pretrained_errors(name: str):
    """What TransformerLens and transformers raise for a damaged or incomplete download, as one line. A cached
    checkpoint also loads as model=local from its snapshot dir, which reads any supported architecture's config."""
    try:
        yield
    except (AttributeError, KeyError, OSError, ValueError) as err:
        snapshot = cached_snapshot(official_name(name))
        where = f"; or run with model=local model.path={snapshot}" if snapshot is not None else ""
        raise CircuitlabError(f"model.name={name}: TransformerLens could not load it ({hf_checkpoint.first_line(err)}){where}") from None


def cached_snapshot(repo: str) -> Path | None:
    """The local-cache snapshot dir of `repo` holding its config.json, or None."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo, "config.json")
    return Path(config).parent if isinstance(config, str) else None


def _go_offline() -> None:
    """Offline mode for huggingface_hub and transformers, which read the setting when they are imported."""
    import huggingface_hub.constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = True


@lru_cache(maxsize=1)
def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    import urllib.parse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = urllib.parse.urlparse(endpoint).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model(model_cfg, device: str = "cpu"):
    """Load (or reuse) the model described by the `model` config group on `device`."""
    processing = tuple((flag, bool(getattr(model_cfg, flag))) for flag in PROCESSING_FLAGS)
    allow_pickle = bool(getattr(model_cfg, "allow_pickle", False))
    key = (model_cfg.source, model_cfg.name, str(model_cfg.path or ""), processing, resolve_device(device), model_cfg.dtype, allow_pickle)
    return _load_cached(*key, files_state=_files_state(model_cfg))


def _files_state(model_cfg) -> tuple:
    """(name, size, mtime) of a checkpoint dir's files: a memoised model is reused only while they are unchanged."""
    if model_cfg.source == "pretrained":
        return ()
    directory = checkpoint_dir(model_cfg)
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(directory.iterdir()) if p.is_file())


@lru_cache(maxsize=4)
def _load_cached(source: str, name: str, path: str, processing: tuple, device: str, dtype: str, allow_pickle: bool = False, files_state: tuple = ()):
    from types import SimpleNamespace

    torch_dtype = DTYPES[dtype]
    flags = dict(processing)
    if source == "pretrained":
        from transformer_lens import HookedTransformer

        ensure_hub_or_cache(name)
        with pretrained_errors(name):
            model = HookedTransformer.from_pretrained(name, device=device, dtype=torch_dtype, **flags)
    else:
        directory = checkpoint_dir(SimpleNamespace(source=source, name=name, path=path))
        if interpbench.is_checkpoint(directory):
            model = interpbench.load_checkpoint(directory, allow_pickle, device)
            model = model if torch_dtype == torch.float32 else model.to(torch_dtype)
        else:
            model = hf_checkpoint.load_checkpoint(directory, device=device, dtype=torch_dtype, processing=flags)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def describe(model) -> dict:
    """Model id and shape for the manifest."""
    cfg = model.cfg
    return {
        "model_name": cfg.model_name,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "d_mlp": cfg.d_mlp,
        "d_vocab": cfg.d_vocab,
        "n_ctx": cfg.n_ctx,
        "n_params": sum(p.numel() for p in model.parameters()),
    }
