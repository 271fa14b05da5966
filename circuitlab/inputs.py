"""Content digests of the files a run reads: its dataset files, the model's weights, config and tokenizer, and a
method's saved state (`method.load`).

A run dir records them in `inputs.json` when the run starts; a rerun into the dir (resume) and a merge of shard dirs
are refused when any of them changed, as they are when the config changed. Digests are sha256 (`digests.py`: read
once per process; a Hugging Face cache blob is named by its own).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from circuitlab.digests import sha256  # noqa: F401  (re-exported: inputs.sha256)
from circuitlab.errors import CircuitlabError

INPUTS_FILE = "inputs.json"
# what transformers' tokenizers read from a checkpoint dir (those present are digested)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt", "vocab.txt",
                   "tokenizer.model", "spiece.model", "added_tokens.json")


def _get(cfg, key: str, default=None):
    if OmegaConf.is_config(cfg):
        return OmegaConf.select(cfg, key, default=default)
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def input_files(cfg) -> tuple[dict[str, Path], dict[str, str]]:
    """(label -> file) of every file the run reads, and (label -> note) of inputs known by name only (a pretrained
    model that is not in the local cache yet)."""
    files: dict[str, Path] = {}
    named: dict[str, str] = {}
    task_path = _get(cfg, "task.path")
    if task_path:
        files["task.path"] = Path(str(task_path)).expanduser()
    files.update(_method_files(cfg))
    for name, file in _model_files(cfg).items():
        if file is None:
            named[f"model/{name}"] = "name only (not in the local cache)"
        else:
            files[f"model/{name}"] = file
    return {k: v for k, v in files.items() if v.is_file()}, named


def _method_files(cfg) -> dict[str, Path]:
    """The files the method's own settings name (its registry record's `input_files`), e.g. DAS's saved interventions."""
    from circuitlab.methods import registry

    method = registry.METHODS.get(str(_get(cfg, "method.name")))
    section = _get(cfg, "method")
    if method is None or method.input_files is None or section is None:
        return {}
    return method.input_files(section)


def _model_files(cfg) -> dict[str, Path | None]:
    from types import SimpleNamespace

    from circuitlab.models import hf_checkpoint, interpbench, loading

    source = _get(cfg, "model.source")
    if source == "pretrained":
        name = str(_get(cfg, "model.name"))
        try:
            snapshot = loading.cached_snapshot(loading.official_name(name))
        except Exception:  # noqa: BLE001  no cache, or a name TransformerLens does not know (refused elsewhere)
            snapshot = None
        if snapshot is None:
            return {name: None}
        directory = snapshot
    else:
        model = SimpleNamespace(source=source, name=_get(cfg, "model.name"), path=_get(cfg, "model.path"))
        directory = loading.checkpoint_dir(model)
    directory = Path(directory)
    found: list[Path] = []
    if source != "pretrained" and interpbench.is_checkpoint(directory):
        config = next((directory / n for n in (*interpbench.CONFIG_FILES, interpbench.PICKLED_CONFIG) if (directory / n).is_file()), None)
        weights = next((directory / n for n in ("model.safetensors", "ll_model.pth") if (directory / n).is_file()), None)
        found += [f for f in (config, weights) if f is not None]
    else:
        found.append(directory / "config.json")
        index = next((directory / n for n in hf_checkpoint.WEIGHT_FILES if (directory / n).is_file()), None)
        if index is not None and index.name.endswith(".index.json"):
            found.append(index)
        try:
            found += hf_checkpoint.weight_files(directory)
        except CircuitlabError:
            if source != "pretrained":
                raise
            return {str(_get(cfg, "model.name")): None}  # a partial download: the hub completes it when the model loads
    found += [directory / n for n in TOKENIZER_FILES if (directory / n).is_file()]
    return {f.name: f for f in dict.fromkeys(found)}


def digests(cfg) -> dict[str, dict]:
    """label -> {"path", "size", "sha256"} of every input of the run (sha256 None: known by name only)."""
    files, named = input_files(cfg)
    out = {label: {"path": str(path), "size": path.stat().st_size, "sha256": sha256(path)} for label, path in files.items()}
    out.update({label: {"path": note, "size": None, "sha256": None} for label, note in named.items()})
    return dict(sorted(out.items()))


def stored(run_dir: Path) -> dict | None:
    """The inputs recorded in a run dir (None: none recorded, e.g. a dir from before they were)."""
    from circuitlab.rundir import read_record

    data = read_record(Path(run_dir) / INPUTS_FILE)
    return data if isinstance(data, dict) or data is None else {}


def first_change(old: dict, new: dict) -> tuple[str, str | None, str | None] | None:
    """(path, old sha256, new sha256) of the first input that differs between two records (a sha256 None: the file is
    not read on that side), or None. An input known by name only on either side (a pretrained model not in the cache
    then or now) cannot be compared, and neither can the files of its group (`model/...`): they are passed over."""
    def group(label: str) -> str:
        return label.split("/", 1)[0]

    by_name = {group(label) for record in (old, new) for label, entry in record.items()
               if not isinstance(entry, dict) or entry.get("sha256") is None}
    for label in dict.fromkeys([*old, *new]):
        if group(label) in by_name:
            continue
        there, here = old.get(label), new.get(label)
        if there is None or here is None:
            entry = there or here
            return entry["path"], (there or {}).get("sha256"), (here or {}).get("sha256")
        if there["sha256"] != here["sha256"]:
            return here["path"], there["sha256"], here["sha256"]
    return None


def describe_change(change: tuple[str, str | None, str | None], changed: str = "changed since this dir's run",
                    then: str = "then", now: str = "now") -> str:
    """"PATH changed since this dir's run (sha256 1a2b... then, 3c4d... now)" for `first_change`'s answer."""
    path, there, here = change
    if there is None:
        return f"{path} {changed} (read {now}, not {then})"
    if here is None:
        return f"{path} {changed} (read {then}, not {now})"
    return f"{path} {changed} (sha256 {there[:12]}... {then}, {here[:12]}... {now})"
