"""Rerunning into a run dir: the stored config decides whether its finished chunks may be reused.

`run_config.json` holds the resolved config of the run that made the dir. A rerun resumes (loads every finished
chunk from `chunks/`) when its config matches in everything that changes results, and is refused with one line
naming the first difference otherwise. `run.resume=false` starts the dir over.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from circuitlab.chunks import ChunkStore
from circuitlab.errors import CircuitlabError

log = logging.getLogger("circuitlab")
CONFIG_FILE = "run_config.json"
CHUNKS_DIR = "chunks"
# settings that change where and how a run executes, not its numbers
NOT_COMPARED = ("name", "device", "results_dir", "progress", "memory_budget_mb", "figures", "run")


def resolved(cfg: DictConfig) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def identity(config: dict, ignore_shard: bool = False) -> dict:
    """The part of a resolved config that determines the results."""
    out = {k: v for k, v in config.items() if k not in NOT_COMPARED}
    if ignore_shard and isinstance(out.get("sweep"), dict):
        out["sweep"] = {k: v for k, v in out["sweep"].items() if k not in ("shard", "num_shards")}
    return out


def first_difference(old, new, path: str = "") -> tuple[str, object, object] | None:
    """(dotted key, old value, new value) of the first difference, or None."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(dict.fromkeys([*old, *new])):
            found = first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
            if found:
                return found
        return None
    return None if old == new else (path, old, new)


def stored_config(run_dir: Path) -> dict | None:
    path = Path(run_dir) / CONFIG_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def resume_flag(cfg: DictConfig) -> bool | None:
    return OmegaConf.select(cfg, "run.resume", default=None) if OmegaConf.is_config(cfg) else None


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse, in one line, a rerun into a dir that holds a run of another config (unless run.resume=false)."""
    stored = stored_config(run_dir)
    if stored is None or resume_flag(cfg) is False:
        return
    difference = first_difference(identity(stored), identity(resolved(cfg)))
    if difference:
        key, there, here = difference
        raise CircuitlabError(
            f"run.dir={run_dir}: holds a run of another config ({key}={there} there, {here} here); it is not resumed: "
            "choose another run.dir, or run.resume=false to start that dir over"
        )


def open_store(cfg: DictConfig, run_dir: Path) -> ChunkStore:
    """The chunk store of `run_dir`, after the config check; records this run's config."""
    from circuitlab.results import write_json

    run_dir = Path(run_dir)
    check_resumable(cfg, run_dir)
    if resume_flag(cfg) is False and (run_dir / CHUNKS_DIR).exists():
        log.info("run.resume=false: starting %s over", run_dir)
        shutil.rmtree(run_dir / CHUNKS_DIR)
    write_json(run_dir / CONFIG_FILE, resolved(cfg))
    sweep = cfg.get("sweep") or {}
    store = ChunkStore(run_dir / CHUNKS_DIR, sweep.get("shard", 0), sweep.get("num_shards", 1))
    if store.values:
        log.info("resuming %s: %d finished sweep points in %d chunk files", run_dir, len(store.values), store.loaded_files)
    elif resume_flag(cfg):
        log.info("run.resume=true: nothing finished in %s yet; starting", run_dir)
    return store
