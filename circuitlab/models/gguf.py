"""GGUF checkpoints (llama.cpp's single-file format): `model.path=FILE.gguf`, or a directory holding exactly one.

transformers reads GGUF files with the `gguf` package (an optional extra: `pip install 'circuitlab[gguf]'`) and
dequantizes every weight to float32 at load. Reading a file's metadata is slow (Gemma 3's 262k-token vocabulary
takes tens of seconds to parse), so the parts every run needs before the weights — the transformers config and the
tokenizer — are written once per file *content* into a cache dir, `<cache>/gguf/<sha256 prefix>/`:

    config.json             transformers' config of the file, with its causal-LM architecture named
    tokenizer.json, ...     the tokenizer transformers builds from the file's metadata
    gguf.json               {"file": the .gguf path, "sha256": its digest}: the weights are read from there

That dir is what the rest of circuitlab treats as the checkpoint dir (`hf_checkpoint` reads its config and tokenizer
as for any Hugging Face dir, and `weight_files` answers the .gguf file, so the input digests cover it). The weights
are never cached: each load dequantizes them from the .gguf file. `CIRCUITLAB_CACHE` moves the cache (default
`$XDG_CACHE_HOME/circuitlab`, else `~/.cache/circuitlab`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from circuitlab.errors import CircuitlabError

log = logging.getLogger("circuitlab")

SUFFIX = ".gguf"
MAGIC = b"GGUF"
MARKER = "gguf.json"
INSTALL = "pip install 'circuitlab[gguf]' (or: pip install gguf)"


def cache_root() -> Path:
    """Where circuitlab keeps what it derives from inputs (never results)."""
    if os.environ.get("CIRCUITLAB_CACHE"):
        return Path(os.environ["CIRCUITLAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "circuitlab"


def find_file(path: Path) -> Path | None:
    """The .gguf file `path` names: the file itself, or the only .gguf in a directory that is not a Hugging Face
    checkpoint (no config.json). None when `path` is neither; one line when a directory holds several."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix.lower() == SUFFIX else None
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(p for p in path.iterdir() if p.suffix.lower() == SUFFIX and p.is_file())
    if len(found) > 1:
        names = ", ".join(p.name for p in found[:5]) + (", ..." if len(found) > 5 else "")
        raise CircuitlabError(f"model.path={path}: holds {len(found)} .gguf files ({names}); name one: model.path={found[0]}")
    return found[0] if found else None


def is_prepared(directory: Path) -> bool:
    """Whether `directory` is a GGUF file's prepared cache dir."""
    return (Path(directory) / MARKER).is_file()


def source_file(directory: Path) -> Path:
    """The .gguf file a prepared dir stands for (one line when the marker is damaged or the file is gone)."""
    marker = Path(directory) / MARKER
    try:
        file = Path(json.loads(marker.read_text(encoding="utf-8"))["file"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CircuitlabError(f"{marker}: damaged cache record ({type(err).__name__}); delete {directory} and rerun") from None
    if not file.is_file():
        raise CircuitlabError(f"{file}: no such file (the GGUF file {directory} was prepared from)")
    return file


def check_header(file: Path) -> None:
    """The first bytes say GGUF (a cheap check before anything parses the file)."""
    try:
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise CircuitlabError(f"{file}: cannot be read ({err.strerror or err})") from None
    if len(head) < 8 or head[:4] != MAGIC:
        raise CircuitlabError(f"{file}: not a GGUF file (it does not start with the GGUF magic bytes; empty, truncated or another format)")


def require_gguf_package(file: Path) -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise CircuitlabError(f"model.path={file}: reading GGUF files needs the gguf package: {INSTALL}") from None


def prepare(file: Path) -> Path:
    """The prepared cache dir of a .gguf file (built on first use, atomically): see the module docstring."""
    from circuitlab.digests import sha256

    file = Path(file).expanduser().resolve()
    check_header(file)
    require_gguf_package(file)
    digest = sha256(file)
    target = cache_root() / "gguf" / digest[:20]
    if is_prepared(target):
        return target
    log.info("model: reading %s's config and tokenizer (once for this file; kept in %s)", file.name, target)
    start = time.perf_counter()
    config, tokenizer = _read_metadata(file)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp's 0700 would make the renamed cache dir private
    except OSError as err:
        raise CircuitlabError(f"{target.parent}: cannot write the GGUF cache there ({err.strerror or err}); set CIRCUITLAB_CACHE to a writable dir") from None
    try:
        config.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"file": str(file), "sha256": digest, "size": file.stat().st_size}))
        try:
            staging.rename(target)
        except OSError:  # another process prepared the same file meanwhile: theirs is as good
            if not is_prepared(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model: %s prepared in %.1f s", file.name, time.perf_counter() - start)
    return target


def _read_metadata(file: Path):
    """(transformers config, tokenizer) of a GGUF file; one line when the file is damaged or truncated, has no
    tokenizer metadata, or is of an architecture transformers cannot read or circuitlab does not hold."""
    from transformers import AutoConfig, AutoTokenizer
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from circuitlab.models.architectures import SUPPORTED, supported_list
    from circuitlab.models.hf_logging import first_line, quiet

    _check_whole(file)
    with quiet():
        try:
            config = AutoConfig.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)
        except Exception as err:  # noqa: BLE001  the file parsed above: what is left is an architecture transformers lacks
            raise CircuitlabError(f"{file}: transformers cannot read this GGUF file ({type(err).__name__}: {first_line(err)})") from None
        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(config.model_type, f"model_type {config.model_type!r}")
        if name not in SUPPORTED:  # named here, with the file the user gave (not the cache dir's config.json)
            raise CircuitlabError(f"{file}: architecture {name} is not supported; supported: {supported_list()}")
        config.architectures = [name]
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name, local_files_only=True)
        except Exception as err:  # noqa: BLE001  transformers raises many kinds for tokenizer metadata it cannot use
            raise CircuitlabError(f"{file}: its tokenizer metadata cannot be used ({type(err).__name__}: {first_line(err)})") from None
    return config, tokenizer


def _check_whole(file: Path) -> None:
    """The whole file parses (its tensors lie inside it) and it carries a vocabulary: one line when not."""
    from gguf import GGUFReader

    try:
        fields = GGUFReader(str(file)).fields
    except Exception as err:  # noqa: BLE001  gguf raises ValueError / IndexError / struct errors on damaged files
        raise CircuitlabError(f"{file}: damaged or truncated GGUF file ({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None
    if "tokenizer.ggml.tokens" not in fields:
        raise CircuitlabError(f"{file}: the GGUF file has no tokenizer metadata (tokenizer.ggml.tokens); "
                              "convert the checkpoint with its tokenizer, or use its Hugging Face dir (model.path=DIR)")


def load_hf_model(directory: Path, config):
    """The transformers model of a prepared dir's .gguf file, every weight dequantized to float32."""
    import torch
    from transformers import AutoModelForCausalLM, GgufConfig

    file = source_file(directory)
    with _no_dequantization_bar():
        return AutoModelForCausalLM.from_pretrained(
            str(file.parent), gguf_file=file.name, config=config, dtype=torch.float32, local_files_only=True,
            quantization_config=GgufConfig(gguf_file=file.name, dequantize=True), output_loading_info=True,
        )


@contextmanager
def _no_dequantization_bar():
    """transformers' GGUF reader draws its own tqdm bar on stderr, which `disable_progress_bar` does not reach: off,
    as every other load bar is."""
    from transformers import modeling_gguf_pytorch_utils as reader

    bar = reader.tqdm
    reader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        reader.tqdm = bar
