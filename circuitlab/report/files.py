"""What a run dir holds, read for its report: the manifest, the overrides it was started with, its status, figures,
side tables and a method's own JSON records; and where the run dirs under a results dir are. Pandas at most, no torch."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
EXAMPLES_FILE = "examples.json"
RECORDS_SHOWN_ELSEWHERE = ("manifest.json", "run_config.json", "inputs.json", EXAMPLES_FILE)
MAX_JSON_CHARS = 200_000


def read_json(path: Path):
    """The file's JSON, or None when it is missing or not JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_manifest(run_dir: Path) -> dict:
    manifest = read_json(Path(run_dir) / "manifest.json")
    return manifest if isinstance(manifest, dict) else {}


def read_config(run_dir: Path, manifest: dict) -> dict:
    """The resolved config: the manifest's copy, else run_config.json (a job that never finished); {} when neither."""
    config = manifest.get("config") or read_json(Path(run_dir) / "run_config.json") or {}
    return config if isinstance(config, dict) else {}


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

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return [str(o) for o in data] if isinstance(data, list) else None
        except Exception:  # noqa: BLE001  a damaged Hydra record: the command is simply not known
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


def run_status(run_dir: Path) -> str:
    """done (a manifest), running (a process holds the dir's lock), else failed (started, never finished)."""
    from circuitlab import rundir

    run_dir = Path(run_dir)
    if (run_dir / "manifest.json").is_file() and (run_dir / "results.csv").is_file():
        return "done"
    if rundir.holder(run_dir) is not None:
        return "running"
    return "failed"


def failure_line(run_dir: Path) -> str:
    """The last error-looking line of the job's own log (Hydra writes one per job), or ''."""
    for path in sorted(Path(run_dir).glob("*.log")):
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        for line in reversed(lines):
            if any(word in line.lower() for word in ("error", "exception", "traceback", "interrupted", "terminated")):
                return line[:300]
    return ""


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
        text = path.read_text(encoding="utf-8", errors="replace")
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

def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("results.csv", "manifest.json", "run_config.json", ".hydra"))


def run_dirs_under(root: Path) -> list[Path]:
    """Every run dir (or started Hydra job dir) at or under `root`, not descending into a run dir."""
    root = Path(root)
    found: list[Path] = []

    def walk(directory: Path) -> None:
        if is_run_dir(directory):
            found.append(directory)
            return
        children = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for child in sorted(children, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)):  # job 2 before job 10
            walk(child)

    if root.is_dir():
        walk(root)
    return found


def sweep_dirs(root: Path) -> list[Path]:
    """Dirs at or under `root` whose children are run dirs (a multirun's sweep dir, an experiment's dir of runs)."""
    return sorted({run.parent for run in run_dirs_under(root) if run.parent != run})
