"""What a run dir holds, read for its report: the manifest, the overrides it was started with, its status, figures,
side tables and a method's own JSON records; and where the run dirs under a results dir are. Every file is read
through circuitlab/runfiles.py (checked, named in one line when damaged). Pandas at most, no torch."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pandas as pd

from circuitlab import runfiles
from circuitlab.errors import CircuitlabError
from circuitlab.runfiles import failure_line, is_run_dir, run_dirs_under, run_status  # noqa: F401  (re-exported: where the runs are, how they ended)

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
EXAMPLES_FILE = "examples.json"
RECORDS_SHOWN_ELSEWHERE = ("manifest.json", "run_config.json", "inputs.json", EXAMPLES_FILE)
MAX_JSON_CHARS = 200_000


def read_json(path: Path):
    """The file's JSON object or list, or None when it is missing or cannot be read (what it adds is then not shown)."""
    try:
        return runfiles.read_json(path, (dict, list))
    except CircuitlabError:
        return None


def read_manifest(run_dir: Path) -> dict:
    """manifest.json, checked (runfiles.DamagedFile when damaged); {} when the run dir has none."""
    if not os.path.lexists(Path(run_dir) / runfiles.MANIFEST):
        return {}
    return runfiles.read_manifest(run_dir)


def read_config(run_dir: Path, manifest: dict) -> dict:
    """The resolved config: the manifest's copy, else run_config.json (a job that never finished; DamagedFile when
    it is damaged); {} when neither."""
    if manifest.get("config") is not None:
        return manifest["config"]
    path = Path(run_dir) / "run_config.json"
    return runfiles.read_json(path, runfiles.MANIFEST_SHAPE["config"]) if os.path.lexists(path) else {}


def overrides_of(run_dir: Path, manifest: dict | None = None) -> list[str] | None:
    """The overrides the run was started with: the manifest's (a notebook run, and CLI runs since reports), else
    Hydra's own record (`.hydra/overrides.yaml`); None when neither is there."""
    manifest = manifest if manifest is not None else read_manifest(run_dir)
    if isinstance(manifest.get("overrides"), list):
        return [str(o) for o in manifest["overrides"]]
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if path.is_file():
        try:
            import yaml

            data = yaml.safe_load(runfiles.read_text(path, "yaml"))
            return [str(o) for o in data] if isinstance(data, list) else None
        except Exception:  # noqa: BLE001  a damaged Hydra record: the command is simply not known (said on the page)
            return None
    return None


def command_of(overrides: list[str] | None) -> str | None:
    """The shell command that reruns the run."""
    if overrides is None:
        return None
    return "circuitlab run " + " ".join(shlex.quote(o) for o in overrides)


def notebook_call(overrides: list[str] | None) -> str | None:
    """The notebook call that reruns the run: `circuitlab.run('ioi_patching', 'task.n_prompts=8')`."""
    if overrides is None:
        return None
    experiment = [o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")]
    rest = [o for o in overrides if not o.startswith("+experiment=")]
    args = [repr(experiment[0])] if len(experiment) == 1 else []
    args += [repr(o) for o in (rest if len(experiment) == 1 else overrides)]
    return f"circuitlab.run({', '.join(args)})"


def figure_files(run_dir: Path, manifest: dict | None) -> list[Path]:
    """figures/*.png, in the order the run drew them (the manifest's), then any others by name."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "figures").glob("*.png"))
    listed = [run_dir / f for f in (manifest or {}).get("files", []) if str(f).endswith(".png")]
    order = {p: i for i, p in enumerate(listed)}
    return sorted(found, key=lambda p: (order.get(p, len(order)), p.name))


def side_tables(run_dir: Path) -> list[Path]:
    """The run dir's CSVs other than results.csv (a method's side tables: circuit edges, faithfulness, ...)."""
    return sorted(p for p in Path(run_dir).glob("*.csv") if p.name not in ("results.csv", "index.csv"))


def json_records(run_dir: Path) -> list[dict]:
    """A method's own JSON files (circuit.json, ...) as text, cut at MAX_JSON_CHARS: {name, kib, text}."""
    out = []
    for path in sorted(Path(run_dir).glob("*.json")):
        if path.name in RECORDS_SHOWN_ELSEWHERE:
            continue
        try:  # the run's own were checked whole (runfiles.check_run); another file is named with what is wrong
            text = runfiles.read_text(path, "json")
        except CircuitlabError as err:
            out.append({"name": path.name, "kib": "?", "text": f"not shown: {err.why}"})
            continue
        shown = text if len(text) <= MAX_JSON_CHARS else text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters in {path.name})"
        out.append({"name": path.name, "kib": f"{len(text) / 1024:.1f}", "text": shown})
    return out


def read_results_safely(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    """(results.csv, '') or (None, the one line that says why it cannot be read)."""
    from circuitlab.errors import CircuitlabError
    from circuitlab.figures import check_readable
    from circuitlab.results import read_results

    try:
        check_readable(run_dir)
        return read_results(run_dir), ""
    except CircuitlabError as err:
        return None, str(err)


# --- the run dirs under a results dir -------------------------------------------------------------------------------

def sweep_dirs(root: Path) -> list[Path]:
    """Dirs at or under `root` whose children are run dirs (a multirun's sweep dir, an experiment's dir of runs)."""
    return sorted({run.parent for run in run_dirs_under(root) if run.parent != run})
