"""`circuitlab status DIR`: where each job of a sweep (or each run under DIR) is, read from the run dirs alone, so it
works the same for local, joblib and Slurm sweeps, from any machine that sees the files, after the submitting
terminal is gone.

Per job: done (a manifest and results.csv), running (a process holds the run dir's lock: `K of N chunks`, N from
`chunks/plan.json`, the count the run planned), failed (started, not running, no manifest: the last error line of
its log, else of the scheduler's log of it), pending (not started yet). The jobs a multirun planned come from the
sweep dir's `slurm_jobs.json` (a Slurm sweep) or from `multirun.yaml` (Hydra's record of the command), so jobs that
never started are listed too. Where the sweep went to Slurm and `squeue` answers, its word refines what the files
cannot say: a requeued job is pending, a job that left the queue without starting failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from circuitlab.errors import ConfigError

from circuitlab.cost import PLAN_FILE  # in chunks/: {"chunks": this run's planned chunk count, ...} (cost.record_plan)

STATES = ("done", "running", "pending", "failed", "not started")


@dataclass
class JobState:
    job: str
    state: str
    detail: str = ""
    overrides: list[str] = field(default_factory=list)
    run_dir: Path | None = None


def chunk_progress(run_dir: Path) -> tuple[int, int | None]:
    """(finished chunk files, the run's planned chunk count or None where it did not record one)."""
    chunks = Path(run_dir) / "chunks"
    done = len(list(chunks.glob("*.pt"))) if chunks.is_dir() else 0
    try:
        planned = json.loads((chunks / PLAN_FILE).read_text()).get("chunks")
    except (OSError, ValueError, AttributeError):
        planned = None
    return done, planned if isinstance(planned, int) else None


def progress_text(run_dir: Path) -> str:
    done, planned = chunk_progress(run_dir)
    if planned is None:
        return f"{done} chunk{'s' * (done != 1)} done"
    return f"{min(done, planned)} of {planned} chunks done"


def run_state(run_dir: Path, scheduler_log: Path | None = None) -> tuple[str, str]:
    """(done | running | failed, detail) of one run dir."""
    from circuitlab import rundir
    from circuitlab.runfiles import error_line, failure_line

    run_dir = Path(run_dir)
    if (run_dir / "manifest.json").is_file() and (run_dir / "results.csv").is_file():
        return "done", _done_detail(run_dir)
    if rundir.holder(run_dir) is not None:
        return "running", progress_text(run_dir)
    why = failure_line(run_dir) or (error_line(scheduler_log) if scheduler_log else "") or "started, never finished (no manifest.json)"
    done, _ = chunk_progress(run_dir)
    kept = f" [{done} chunk{'s' * (done != 1)} kept]" if done else ""
    return "failed", why + kept


def _done_detail(run_dir: Path) -> str:
    try:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        chunks = manifest.get("chunks") or {}
        seconds = sum(v for v in (manifest.get("wall_time_seconds") or {}).values() if isinstance(v, (int, float)))
        return f"{chunks.get('chunks_computed', 0)} chunks computed, {chunks.get('chunks_loaded', 0)} loaded, {seconds:.0f} s"
    except (OSError, ValueError, AttributeError):
        return ""


def planned_jobs(sweep_dir: Path) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """({job number: overrides} of every job the multirun planned, {job number: its Slurm record}); ({}, {}) when
    the sweep dir records neither."""
    from circuitlab.slurm import JOBS_FILE

    try:
        slurm = json.loads((Path(sweep_dir) / JOBS_FILE).read_text())
    except (OSError, ValueError):
        slurm = {}
    slurm = slurm if isinstance(slurm, dict) else {}
    jobs = {number: list(record.get("overrides") or []) for number, record in slurm.items() if isinstance(record, dict)}
    if not jobs:
        jobs = {str(n): overrides for n, overrides in enumerate(_expanded(Path(sweep_dir)))}
    return jobs, slurm


def _expanded(sweep_dir: Path) -> list[list[str]]:
    """Every job of the multirun recorded in `multirun.yaml`, expanded as Hydra's basic sweeper expands it; [] when
    it cannot be (no record, or a sweep Hydra alone can expand)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        import yaml

        record = yaml.safe_load(path.read_text())
        overrides = [str(o) for o in record["hydra"]["overrides"]["task"]]
        from circuitlab.multirun import sweep_jobs

        return sweep_jobs(overrides)
    except Exception:  # noqa: BLE001  a damaged record or an unusual sweep: only the started jobs are listed
        return []


def sweep_states(sweep_dir: Path, ask_scheduler: bool = True) -> list[JobState]:
    """Every job of a multirun dir, planned or started."""
    sweep_dir = Path(sweep_dir)
    jobs, slurm = planned_jobs(sweep_dir)
    started = {p.name: p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and _is_job_dir(p)}
    numbers = sorted({*jobs, *started}, key=lambda n: (0, int(n), "") if n.isdigit() else (1, 0, n))
    queue = _queue(slurm) if ask_scheduler and slurm else None
    states = []
    for number in numbers:
        record = slurm.get(number) or {}
        log = Path(record["stderr"]) if record.get("stderr") else None
        run_dir = started.get(number)
        overrides = jobs.get(number) or _recorded_overrides(run_dir)
        if run_dir is None:
            state, detail = ("pending", "not started yet") if slurm else ("not started", "")
        else:
            state, detail = run_state(run_dir, log)
        slurm_id = record.get("slurm_job")
        if queue is not None and slurm_id:
            state, detail = _refined(state, detail, queue.get(slurm_id), run_dir)
        if slurm_id:
            detail = f"{detail} (Slurm job {slurm_id})" if detail else f"Slurm job {slurm_id}"
        states.append(JobState(number, state, detail, overrides, run_dir))
    return states


def _is_job_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("results.csv", "manifest.json", "run_config.json", ".hydra", "chunks"))


def _recorded_overrides(run_dir: Path | None) -> list[str]:
    if run_dir is None:
        return []
    from circuitlab.report.files import overrides_of

    try:
        return overrides_of(run_dir) or []
    except Exception:  # noqa: BLE001  a damaged record: the overrides are simply not shown
        return []


def _queue(slurm: dict) -> dict[str, str] | None:
    from circuitlab.slurm import queued

    ids = [r["slurm_job"] for r in slurm.values() if isinstance(r, dict) and r.get("slurm_job")]
    try:
        return queued(ids) if ids else None
    except Exception:  # noqa: BLE001  no Slurm here (another machine): the files alone
        return None


def _refined(state: str, detail: str, queued_as: str | None, run_dir: Path | None) -> tuple[str, str]:
    """What Slurm's queue adds: a job in it is pending or running whatever its dir says; a job out of it that never
    started failed."""
    if queued_as in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING"):
        kept = f"requeued, {progress_text(run_dir)} so far" if run_dir is not None else "not started yet"
        return "pending", kept
    if queued_as in ("RUNNING", "COMPLETING") and state != "done":
        return "running", progress_text(run_dir) if run_dir is not None else "starting"
    if queued_as is None and state == "pending":
        return "failed", "left the Slurm queue without starting (cancelled?)"
    return state, detail


def format_status(directory: Path, states: list[JobState]) -> list[str]:
    """The lines `circuitlab status` prints: a summary, then one line per job with the overrides that set it apart."""
    counts = {s: sum(j.state == s for j in states) for s in STATES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    lines = [f"{directory}: {len(states)} job{'s' * (len(states) != 1)}: {summary or 'none'}"]
    varying = _varying([j.overrides for j in states])
    width = max((len(j.job) for j in states), default=1)
    for job in states:
        label = " ".join(o for o in job.overrides if o in varying)
        text = f"  job {job.job:<{width}}  {job.state:<11} {job.detail}"
        lines.append(text + (f"  [{label}]" if label else ""))
    return lines


def _varying(overrides: list[list[str]]) -> set[str]:
    if len(overrides) < 2:
        return set()
    every = set(overrides[0]).intersection(*overrides)
    return set().union(*overrides) - every


def status_lines(directory: Path) -> list[str]:
    """`circuitlab status DIR`: a multirun dir (its jobs), a run dir, or a dir of runs (each run, each sweep)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ConfigError("status DIR", directory, "an existing directory: a multirun dir, a run dir or a dir of runs")
    if _is_sweep_dir(directory):
        return format_status(directory, sweep_states(directory))
    if _is_job_dir(directory):
        state, detail = run_state(directory)
        return [f"{directory}: {state}{f' ({detail})' if detail else ''}"]
    lines = []
    from circuitlab.report.files import run_dirs_under

    runs = run_dirs_under(directory)
    sweeps = sorted({run.parent for run in runs if _is_sweep_dir(run.parent)} | {p for p in directory.rglob("multirun.yaml")
                                                                                  for p in [p.parent]})
    for sweep in sweeps:
        lines += format_status(sweep, sweep_states(sweep))
    singles = [run for run in runs if run.parent not in sweeps]
    if singles:
        lines += format_status(directory, [JobState(str(run.relative_to(directory)), *run_state(run), _recorded_overrides(run), run)
                                           for run in singles])
    return lines or [f"{directory}: no runs"]


def _is_sweep_dir(directory: Path) -> bool:
    from circuitlab.slurm import JOBS_FILE

    return (directory / "multirun.yaml").is_file() or (directory / JOBS_FILE).is_file()
