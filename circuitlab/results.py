"""The run directory: results.csv, results.pt, dataset.pt, manifest.json, figures/. Every write is atomic
(storage.py; its writers are re-exported here)."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pandas as pd

from circuitlab.storage import atomic_write, file_mode, load_tensors, umask, write_csv, write_json, write_tensors, write_text  # noqa: F401  (re-exported)

SHARED_COLUMNS = ["experiment", "method", "stream", "layer", "head", "heads", "group", "position", "position_label"]


SHARED_DTYPES = {"head": "Int64", "heads": "string", "group": "string", "position": "string"}


def method_columns() -> dict[str, str]:
    """Every registered method's own results.csv columns (in registration order) and the dtype its record declares
    (`registry.Column`)."""
    from circuitlab.methods import registry

    own: dict[str, str] = {}
    for method in registry.METHODS.values():
        for column in method.columns:
            if own.setdefault(column.name, column.dtype) != column.dtype:
                raise ValueError(f"results.csv column {column.name}: {method.name} declares {column.dtype}, another method {own[column.name]}")
    return own


def csv_columns() -> list[str]:
    """results.csv's columns: the shared ones, every registered method's own (in registration order), metric, value."""
    return [*SHARED_COLUMNS, *method_columns(), "metric", "value"]


def required_columns() -> list[str]:
    """The columns every results.csv has, whichever methods were registered when it was written (a method's own
    columns are added by the methods registered since, and read as empty)."""
    return [*SHARED_COLUMNS, "metric", "value"]


PACKAGES = ("circuitlab", "torch", "transformer-lens", "transformers", "hydra-core", "pandas", "plotnine", "numpy")


def tidy_frame(rows: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=csv_columns())
    frame["head"] = frame["head"].astype("Int64")
    return frame


EMPTY = {"string": "", "float64": float("nan"), "boolean": None}  # a method's column in a run of another method


def read_results(run_dir: Path) -> pd.DataFrame:
    """results.csv with the shared columns' dtypes and each method's own as its registry record declares them; the
    columns of methods registered since the run was written are added, empty. A file cut short is refused in one line
    (runfiles.DamagedFile; `figures.check_readable` checks the whole run against its manifest)."""
    own = method_columns()
    # float64 columns are parsed by pandas as written, then made numbers so that an empty cell is NaN; boolean ones
    # are read as text and mapped
    dtypes = {**SHARED_DTYPES, **{c: "string" for c, dtype in own.items() if dtype != "float64"}}
    from circuitlab.runfiles import read_table

    frame = read_table(Path(run_dir) / "results.csv", dtype=dtypes, keep_default_na=False, na_values={"head": [""]})
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")  # "nan" (e.g. no training loss) stays NaN
    for column, dtype in own.items():
        if column in frame.columns and dtype == "float64":
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
        elif column in frame.columns and dtype == "boolean":
            frame[column] = frame[column].map({"True": True, "False": False}).astype("boolean")
    for column in csv_columns():  # columns newer than the run (a method registered since, say): added, empty
        if column not in frame.columns and "metric" in frame.columns:
            dtype = own.get(column, "string")
            frame.insert(frame.columns.get_loc("metric"), column, pd.Series([EMPTY[dtype]] * len(frame), dtype=dtype))
    return frame


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit(directory: Path) -> str | None:
    """The commit of the checkout holding `directory` (with `+dirty` when it has uncommitted changes)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


INDEX_COLUMNS = {"job": "string", "status": "string", "overrides": "string", "experiment": "string", "method": "string", "model": "string",
                 "n_sweep_points": "Int64", "shard": "Int64", "num_shards": "Int64", "clean_logit_diff": "float64",
                 "corrupted_logit_diff": "float64", "sweep_seconds": "float64", "run_dir": "string", "problem": "string"}


def sweep_index(sweep_dir: Path, planned: list[list[str]] | None = None) -> pd.DataFrame:
    """One row per job dir of a multirun: its overrides, experiment, shape, baselines and status (done; running;
    failed, with the last error line of its log; damaged, with the line that names the damaged file); with `planned`
    (every job's overrides, in Hydra's order), one row per job that never started (status "not started"). Counts stay
    integers (empty when not known)."""
    from circuitlab import runfiles

    rows, jobs = [], sorted((p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")), key=_job_order)
    for job in jobs:
        manifest_path = job / "manifest.json"
        if not runfiles.is_run_dir(job):  # neither a run's files nor Hydra's record of a started job
            continue
        row = {"job": job.name, "run_dir": str(job), "overrides": " ".join(_job_overrides(job)), "status": "unfinished"}
        if not manifest_path.is_file():  # started, not finished: running (a process holds its lock), else failed, and why
            from circuitlab.runfiles import failure_line, run_status

            row["status"] = run_status(job)
            row["problem"] = (failure_line(job) or "started, never finished (no manifest.json)") if row["status"] == "failed" else ""
        if manifest_path.is_file():
            try:
                manifest = runfiles.read_manifest(job)
            except runfiles.DamagedFile as err:
                rows.append({**row, "status": "damaged", "problem": str(err)})
                continue
            config, baselines = manifest.get("config") or {}, manifest.get("baselines") or {}
            row.update(
                status="done",
                experiment=manifest.get("experiment"),
                method=(config.get("method") or {}).get("name"),
                model=(config.get("model") or {}).get("name"),
                n_sweep_points=manifest.get("n_sweep_points"),
                shard=(manifest.get("shard") or {}).get("index"),
                num_shards=(manifest.get("shard") or {}).get("num_shards"),
                clean_logit_diff=(baselines.get("clean") or {}).get("logit_diff"),
                corrupted_logit_diff=(baselines.get("corrupted") or {}).get("logit_diff"),
                sweep_seconds=(manifest.get("wall_time_seconds") or {}).get("sweep"),
            )
        rows.append(row)
    started = {p.name for p in jobs}
    if planned and all(name.isdigit() for name in started):  # Hydra's default job dirs (0, 1, ...): the others never started
        rows += [{"job": str(number), "status": "not started", "overrides": " ".join(job), "run_dir": str(Path(sweep_dir) / str(number))}
                 for number, job in enumerate(planned) if str(number) not in started]
        rows.sort(key=lambda row: int(row["job"]))
    frame = pd.DataFrame(rows, columns=list(INDEX_COLUMNS))
    return frame.astype({c: dtype for c, dtype in INDEX_COLUMNS.items() if dtype != "float64"}).astype({c: "float64" for c, d in INDEX_COLUMNS.items() if d == "float64"})


def _job_overrides(job: Path) -> list[str]:
    """The job's overrides as Hydra recorded them (.hydra/overrides.yaml); [] when it did not or cannot be read."""
    import yaml

    from circuitlab.errors import CircuitlabError
    from circuitlab.runfiles import read_text

    path = job / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(read_text(path, "yaml"))
    except (CircuitlabError, yaml.YAMLError):
        return []
    return [str(o) for o in data] if isinstance(data, list) else []


def read_sweep_index(sweep_dir: Path) -> pd.DataFrame | None:
    """index.csv of a multirun dir as written (integers as integers); None when there is none or it cannot be read."""
    from circuitlab.runfiles import read_table

    path = Path(sweep_dir) / "index.csv"
    if not path.is_file():
        return None
    try:
        frame = read_table(path, keep_default_na=False, na_values=[""], dtype={c: d for c, d in INDEX_COLUMNS.items() if d != "float64"})
    except ValueError:  # damaged (runfiles.DamagedFile), or a column that does not read as its type
        return None
    return frame if {"job", "status", "overrides"} <= set(frame.columns) else None


def _job_order(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def write_sweep_index(sweep_dir: Path, planned: list[list[str]] | None = None) -> Path:
    """(Re)write `index.csv` of a multirun dir from its job dirs and the `planned` jobs (each job rewrites it when it
    finishes, so the last one to finish, or the one interrupted, leaves the complete index)."""
    path = Path(sweep_dir) / "index.csv"
    write_csv(path, sweep_index(sweep_dir, planned))
    return path
