"""`circuitlab merge DIR... --out OUT`: shard dirs of one sweep -> one run dir, as if the sweep had run whole.

The shards' finished chunks are gathered into OUT/chunks and the unsharded config is run into OUT: every sweep
point is loaded, none is computed (the manifest's `chunks` says so), and the baselines, tables and figures are
made by the same code as an unsharded run's. Nothing is overwritten: OUT must not hold anything yet.

Shards must come from one config and the same inputs (`inputs.json`: dataset files, weights, tokenizer), and the
files the merge itself reads must still be those. A damaged chunk in a shard is named in one warning and left out,
so the merge computes its points. The merge is built in a temp dir beside OUT and renamed to OUT when it is whole:
a failed or interrupted merge leaves no OUT, and the retry is not refused.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from circuitlab import inputs, rundir
from circuitlab.engine.chunks import read_chunk
from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.results import umask
from circuitlab.resume import CHUNKS_DIR, first_difference, identity, stored_config

log = logging.getLogger("circuitlab")


def check_shards(dirs: list[Path]) -> dict:
    """The shards' common config, after checking they are all the shards of one sweep, each once, of the same
    inputs."""
    configs = []
    for directory in dirs:
        config = stored_config(directory)
        if config is None:
            raise ConfigError("merge DIR", directory, "run dirs written by `circuitlab run ... sweep.num_shards=N` (no run_config.json here)")
        configs.append(config)
    first = configs[0]
    for directory, config in zip(dirs[1:], configs[1:]):
        difference = first_difference(identity(first, ignore_shard=True), identity(config, ignore_shard=True))
        if difference is None and config["sweep"]["num_shards"] != first["sweep"]["num_shards"]:
            difference = ("sweep.num_shards", first["sweep"]["num_shards"], config["sweep"]["num_shards"])
        if difference:
            key, there, here = difference
            raise CircuitlabError(f"merge: {directory} is not a shard of the same sweep as {dirs[0]} ({key}={here} there, {there} in {dirs[0]})")
    n = first["sweep"]["num_shards"]
    shards = [c["sweep"]["shard"] for c in configs]
    duplicates = sorted({s for s in shards if shards.count(s) > 1})
    if duplicates:
        raise CircuitlabError(f"merge: shard {duplicates[0]} of {n} given twice")
    missing = sorted(set(range(n)) - set(shards))
    if missing:
        raise CircuitlabError(f"merge: shards {', '.join(map(str, missing))} of {n} missing (given: {', '.join(map(str, sorted(shards)))})")
    check_inputs(dirs, first)
    return first


def check_inputs(dirs: list[Path], config: dict) -> None:
    """The shards read the same files, and the merge would read them still (dirs from before input digests were
    recorded are not checked)."""
    recorded = [(d, inputs.stored(d)) for d in dirs]
    recorded = [(d, r) for d, r in recorded if r is not None]
    if not recorded:
        return
    (base, reference), *others = recorded
    for directory, other in others:
        change = inputs.first_change(reference, other)
        if change:
            words = inputs.describe_change(change, f"differs between the shards {base} and {directory}", then=f"in {base}", now=f"in {directory}")
            raise CircuitlabError(f"merge: {words}; merge shards of one sweep over the same inputs")
    change = inputs.first_change(reference, inputs.digests(config))
    if change:
        words = inputs.describe_change(change, "changed since the shards ran", then="then", now="now")
        raise CircuitlabError(f"merge: {words}; the merge would mix them (rerun the shards, or restore the file)")


def merge_shards(dirs: list[Path], out: Path) -> dict:
    """Merge shard dirs into `out`; returns the merged run's manifest."""
    dirs, out = [Path(d) for d in dirs], Path(out)
    rundir.check_location("merge --out", out)
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError("merge DIR", directory, "existing shard run dirs")
    config = check_shards(dirs)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("merge --out", out, "a new or empty directory (nothing is overwritten)")
    created = _missing_ancestor(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.merging-", dir=out.parent))
    try:
        manifest = _merge_into(dirs, config, out, building)
        if out.exists():
            out.rmdir()  # empty (checked above); a file appearing there meanwhile fails the merge, not overwritten
        os.rename(building, out)
        os.chmod(out, 0o777 & ~umask())  # mkdtemp made it 0700
    except BaseException as err:
        shutil.rmtree(building, ignore_errors=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        if isinstance(err, KeyboardInterrupt):
            signum = rundir.interrupted_by(err)
            what = "interrupted" if signum == 2 else "terminated"
            raise rundir.Interrupted(f"{what}: the merge was not written ({out} left as it was); rerun the same command to merge", signum) from None
        if isinstance(err, OSError):
            raise CircuitlabError(f"merge --out={out}: cannot be written ({err.strerror or err})") from None
        raise
    return manifest


def _merge_into(dirs: list[Path], config: dict, out: Path, building: Path) -> dict:
    from circuitlab.run import run_experiment

    for directory in dirs:
        for chunk in sorted((directory / CHUNKS_DIR).glob("*.pt")):
            if read_chunk(chunk, what="left out: the merge computes its sweep points") is None:
                continue
            target = building / CHUNKS_DIR / chunk.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(chunk, target)
    merged = copy.deepcopy(config)
    merged["sweep"].update(shard=0, num_shards=1)
    merged["run"] = {"dir": str(out), "resume": None}
    merged["figures"] = True
    return run_experiment(OmegaConf.create(merged), building)


def _missing_ancestor(path: Path) -> Path | None:
    """The outermost of `path` and its parents that does not exist yet (what a failed merge removes again)."""
    missing = None
    while not path.exists() and path.parent != path:
        missing, path = path, path.parent
    return missing

