"""Rerunning into a run dir: the stored config and inputs decide whether its finished chunks may be reused.

`run_config.json` holds the resolved config of the run that made the dir, `inputs.json` the sha256 of every file it
read (dataset files, the model's weights, config and tokenizer, `method.load`; see `inputs.py`). A rerun resumes
(loads every finished chunk from `chunks/`) when its config matches in everything that changes results and its
inputs are byte for byte the same, and is refused with one line naming the first difference otherwise.
`run.resume=false` starts the dir over.

`preflight` runs every check before Hydra writes anything into the dir (the CLI calls it first), and loads the model
when the dir already holds files, so that a failing load leaves an existing dir exactly as it was.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from circuitlab import inputs, rundir
from circuitlab.engine.chunks import ChunkStore
from circuitlab.errors import CircuitlabError

log = logging.getLogger("circuitlab")
CONFIG_FILE = "run_config.json"
CHUNKS_DIR = "chunks"
# settings that change where and how a run executes, not its numbers
NOT_COMPARED = ("name", "device", "results_dir", "progress", "memory_budget_mb", "threads", "figures", "run")


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
    config = rundir.read_record(path)
    if config is not None and not isinstance(config, dict):
        raise CircuitlabError(f"{path}: damaged (not a config); {rundir.START_OVER}")
    return config


def resume_flag(cfg: DictConfig) -> bool | None:
    return OmegaConf.select(cfg, "run.resume", default=None) if OmegaConf.is_config(cfg) else None


def check_resumable(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse, in one line, a rerun into a dir that holds a run of another config or of other inputs (unless
    run.resume=false). Reads only."""
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
    recorded = inputs.stored(run_dir)
    if recorded is None:
        log.info("%s records no input digests (written before they were); its inputs are not checked", run_dir)
        return
    change = inputs.first_change(recorded, inputs.digests(cfg))
    if change:
        raise CircuitlabError(f"run.dir={run_dir}: {inputs.describe_change(change)}; it is not resumed: choose another run.dir, "
                              "or run.resume=false to start that dir over")


def check_run_dir(cfg: DictConfig, run_dir: Path, results_dir: bool = True) -> None:
    """Every check of the output location that reads only: `results_dir` names a directory (unless
    results_dir=False; the run dir may lie elsewhere, so only its own place must be writable), the run dir is a
    writable directory, neither inside another run's dir nor holding other runs, no other process holds it, and it
    may be resumed."""
    if results_dir:
        rundir.check_location("results_dir", cfg.get("results_dir"), writable=False)
    rundir.check_location("run.dir", run_dir)
    rundir.check_not_other_runs("run.dir", run_dir)
    rundir.check_free(run_dir)
    check_resumable(cfg, run_dir)


def holds_files(run_dir: Path) -> bool:
    return Path(run_dir).is_dir() and any(Path(run_dir).iterdir())


def preflight(cfg: DictConfig, run_dir: Path | None = None) -> None:
    """Before Hydra writes into the run dir (its .hydra/ and log; `run_dir`, default `run.dir`): the run dir checks,
    and, when the dir already holds files, the model's load (memoised: the run reuses it), so that nothing there
    changes unless it loads."""
    from circuitlab.models import loading

    run_dir = Path(str(cfg.run.dir)) if run_dir is None else Path(run_dir)
    check_run_dir(cfg, run_dir)
    if holds_files(run_dir):
        loading.load_model(cfg.model, device=loading.resolve_device(cfg.device))


def open_store(cfg: DictConfig, run_dir: Path) -> ChunkStore:
    """The chunk store of `run_dir`, after the config and input checks; records this run's inputs and config. Call
    with the dir locked (`rundir.locked`)."""
    from circuitlab.results import write_json

    run_dir = Path(run_dir)
    check_resumable(cfg, run_dir)
    digests = inputs.digests(cfg)
    if resume_flag(cfg) is False:
        if (run_dir / CHUNKS_DIR).exists():
            log.info("run.resume=false: starting %s over", run_dir)
            shutil.rmtree(run_dir / CHUNKS_DIR)
        (run_dir / "manifest.json").unlink(missing_ok=True)  # the dir no longer holds that finished run
    for directory in (run_dir, run_dir / CHUNKS_DIR, run_dir / "figures"):
        rundir.remove_stale_temps(directory)
    write_json(run_dir / inputs.INPUTS_FILE, digests)  # before the config: a dir with a config always has its inputs
    write_json(run_dir / CONFIG_FILE, resolved(cfg))
    sweep = cfg.get("sweep") or {}
    store = ChunkStore(run_dir / CHUNKS_DIR, sweep.get("shard", 0), sweep.get("num_shards", 1))
    if store.values:
        log.info("resuming %s: %d finished sweep points in %d chunk files", run_dir, len(store.values), store.loaded_files)
    elif resume_flag(cfg):
        log.info("run.resume=true: nothing finished in %s yet; starting", run_dir)
    return store
