"""`circuitlab merge DIR... --out OUT`: shard dirs of one sweep -> one run dir, as if the sweep had run whole.

The shards' finished chunks are gathered into OUT/chunks and the unsharded config is run into OUT: every sweep
point is loaded, none is computed (the manifest's `chunks` says so), and the baselines, tables and figures are
made by the same code as an unsharded run's. Nothing is overwritten: OUT must not hold anything yet.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from omegaconf import OmegaConf

from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.resume import CHUNKS_DIR, first_difference, identity, stored_config


def check_shards(dirs: list[Path]) -> dict:
    """The shards' common config, after checking they are all the shards of one sweep, each once."""
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
    return first


def merge_shards(dirs: list[Path], out: Path) -> dict:
    """Merge shard dirs into `out`; returns the merged run's manifest."""
    from circuitlab.run import run_experiment

    dirs, out = [Path(d) for d in dirs], Path(out)
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError("merge DIR", directory, "existing shard run dirs")
    config = check_shards(dirs)
    if out.exists() and any(out.iterdir()):
        raise ConfigError("merge --out", out, "a new or empty directory (nothing is overwritten)")
    for directory in dirs:
        for chunk in sorted((directory / CHUNKS_DIR).glob("*.pt")):
            target = out / CHUNKS_DIR / chunk.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(chunk, target)
    merged = copy.deepcopy(config)
    merged["sweep"].update(shard=0, num_shards=1)
    merged["run"] = {"dir": str(out), "resume": None}
    merged["figures"] = True
    manifest = run_experiment(OmegaConf.create(merged), out)
    return manifest
