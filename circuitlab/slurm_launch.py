"""The submitting side of `hydra/launcher=slurm` (`hydra_plugins.circuitlab_slurm.CircuitlabSlurmLauncher.launch`):

- jobs whose run dir already holds their finished run (a rerun of the same command into the same sweep dir) are
  not submitted again: a rerun computes only what is missing (unfinished jobs resume from their chunks);
- the others go out as job arrays of at most MaxArraySize tasks (`scontrol show config`); a refusal by sbatch is one
  line naming the launcher field (exit 2) and leaves no stub sweep dir;
- `slurm_jobs.json` in the sweep dir maps each multirun job to its Slurm job and log files (`circuitlab status`);
- the wait polls `squeue` and the jobs' result files, never `sacct` (accounting is off on many small clusters: then
  submitit warns at every poll and never sees a cancelled job end); `wait: false` submits and returns, and Ctrl-C
  while waiting leaves the jobs running.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

from circuitlab.errors import EXIT_USAGE, CircuitlabError
from circuitlab.slurm import (JOBS_FILE, accounting_enabled, error_line, executor, max_array_size, queued, reason)

log = logging.getLogger("circuitlab")
POLL_SECONDS = 2.0


def launch(launcher, job_overrides, initial_job_idx: int):
    """Submit the multirun's unfinished jobs; wait for them (unless `wait: false`); every job's JobReturn."""
    from hydra.core.singleton import Singleton
    from hydra.core.utils import JobReturn, JobStatus, filter_overrides

    config = launcher.config
    sweep_dir = Path(str(config.hydra.sweep.dir))
    made_here = not sweep_dir.exists() or {p.name for p in sweep_dir.iterdir()} <= {"multirun.yaml", ".submitit"}
    params = dict(launcher.params)
    wait = bool(params.get("wait", True))
    numbered = [(initial_job_idx + i, list(o)) for i, o in enumerate(job_overrides)]
    finished = finished_jobs(launcher, numbered)
    todo = [(n, o) for n, o in numbered if n not in finished]
    returns = {n: JobReturn(overrides=o, status=JobStatus.COMPLETED, _return_value=None) for n, o in numbered if n in finished}
    if finished:
        print(f"circuitlab: {len(finished)} of {len(numbered)} jobs finished already (their run dirs hold their finished runs): "
              "not submitted again", file=sys.stderr)
    if not todo:
        return [returns[n] for n, _ in numbered]
    built = executor(params, _devices(config, [o for _, o in todo]))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for number, overrides in todo:
        log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
    size = max_array_size()
    jobs = []
    for start in range(0, len(todo), size):
        arguments = [(o, "hydra.sweep.dir", n, f"job_id_for_{n}", Singleton.get_state()) for n, o in todo[start:start + size]]
        jobs += _submit(built, launcher, arguments, params, sweep_dir if made_here and not jobs else None)
    record = _write_jobs_file(sweep_dir, todo, jobs)
    arrays = sorted({j.job_id.split("_")[0] for j in jobs}, key=int)
    print(f"circuitlab: submitted {len(jobs)} job{'s' * (len(jobs) != 1)} to Slurm as {len(arrays)} array{'s' * (len(arrays) != 1)} "
          f"({', '.join(arrays)}; MaxArraySize {size}) into {sweep_dir}", file=sys.stderr)
    if not accounting_enabled():
        print("circuitlab: Slurm accounting is off here: job states are read from squeue and the run dirs", file=sys.stderr)
    if not wait:
        print(f"circuitlab: not waiting (hydra.launcher.wait=false); follow them with: circuitlab status {sweep_dir}", file=sys.stderr)
        returns.update({n: JobReturn(overrides=o, status=JobStatus.COMPLETED, _return_value=None) for n, o in todo})
        return [returns[n] for n, _ in numbered]
    try:
        returns.update(wait_for(jobs, todo, record, sweep_dir))
    except KeyboardInterrupt:
        print(f"circuitlab: stopped waiting; the jobs go on in Slurm (squeue -j {','.join(arrays)}); follow them with "
              f"circuitlab status {sweep_dir}; cancel them with scancel {' '.join(arrays)}", file=sys.stderr)
        raise SystemExit(130) from None
    failed = [(n, r) for n, r in sorted(returns.items()) if r.status == JobStatus.FAILED]
    if failed:  # one line each (Hydra would print a traceback for the first), then how to finish them
        for number, result in failed:
            print(f"circuitlab: error: {result._return_value}", file=sys.stderr)
        others = "; the others are done" if len(failed) < len(numbered) else ""
        print(f"circuitlab: {len(failed)} of {len(numbered)} jobs failed{others}. Rerun the same command with "
              f"hydra.sweep.dir={sweep_dir} to finish them (each resumes from its finished chunks); circuitlab status {sweep_dir}",
              file=sys.stderr)
        raise SystemExit(1)
    return [returns[n] for n, _ in numbered]


def finished_jobs(launcher, numbered: list) -> set[int]:
    """The jobs whose dir holds their finished run (a manifest and results.csv; the pre-flight checked that a job dir
    holding files holds a run of this job's config). None when the sweep starts over (run.resume=false)."""
    from omegaconf import OmegaConf, open_dict

    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    if not sweep_dir.is_dir() or OmegaConf.select(launcher.config, "run.resume", default=None) is False:
        return set()
    done = set()
    for number, overrides in numbered:
        if any(o.replace(" ", "") in ("run.resume=false", "run.resume=False") for o in overrides):
            continue
        if str(OmegaConf.select(launcher.config, "hydra.sweep.subdir", throw_on_resolution_failure=False)) == "${hydra.job.num}":
            job_dir = sweep_dir / str(number)
        else:  # another naming: Hydra's config loader names the dir, as the job will
            cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
            with open_dict(cfg):
                cfg.hydra.job.num = number
            job_dir = sweep_dir / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
        if (job_dir / "manifest.json").is_file() and (job_dir / "results.csv").is_file():
            done.add(number)
    return done


def _devices(config, job_overrides) -> set[str]:
    """The devices the jobs ask for: the sweep's `device`, and any job's own `device=` override."""
    devices = {str(config.get("device", "auto"))}
    for overrides in job_overrides:
        devices |= {o.split("=", 1)[1] for o in overrides if o.startswith("device=")}
    return devices


def _submit(built, launcher, arguments: list, params: dict, remove_on_refusal: Path | None) -> list:
    """One job array; a refusal by sbatch ends in one line (exit 2), leaving no stub sweep dir behind."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured), contextlib.redirect_stdout(captured):  # submitit prints sbatch's stderr
            return built.map_array(launcher, *zip(*arguments))
    except (FailedJobError, FailedSubmissionError, subprocess.SubprocessError, OSError) as err:
        if remove_on_refusal is not None:
            shutil.rmtree(remove_on_refusal, ignore_errors=True)
        why = reason(str(err))
        print(f"circuitlab: error: {_refused_field(params, why)}sbatch refused the job array: {why}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None


def _refused_field(params: dict, why: str) -> str:
    words = why.lower()
    for field, hints in (("partition", ("partition",)), ("gpus_per_node", ("gres", "gpu")), ("mem_gb", ("memory",)),
                         ("timeout_min", ("time limit",)), ("cpus_per_task", ("cpu",))):
        if any(h in words for h in hints) and params.get(field) is not None:
            return f"hydra.launcher.{field}={params[field]}: "
    return "hydra.launcher: "


def _write_jobs_file(sweep_dir: Path, numbered: list, jobs: list) -> dict:
    """slurm_jobs.json: each multirun job's Slurm job id and log files (a rerun updates the jobs it submits)."""
    from circuitlab.storage import write_json

    path = sweep_dir / JOBS_FILE
    record = {}
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
    record = dict(record) if isinstance(record, dict) else {}
    for (number, overrides), job in zip(numbered, jobs):
        record[str(number)] = {"slurm_job": job.job_id, "overrides": overrides, "stdout": str(job.paths.stdout),
                               "stderr": str(job.paths.stderr), "result": str(job.paths.result_pickle),
                               "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, record)
    return record


def result_of(path: Path):
    """(outcome, value) from a submitit result file, or None while there is none."""
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError):
        return None


def job_dir_of(sweep_dir: Path, number: int) -> Path:
    """A job's run dir as Hydra's default `hydra.sweep.subdir` names it."""
    return Path(sweep_dir) / str(number)


def _why_failed(job_dir: Path, log: Path, outcome) -> str:
    """The job's own last error line (its run dir's log), else its Slurm log's, else the error submitit recorded."""
    from circuitlab.status import run_state

    if job_dir.is_dir():
        state, detail = run_state(job_dir, log)
        if state == "failed":
            return detail
    if outcome is not None and outcome[0] == "error":
        return str(outcome[1]).strip().splitlines()[-1]
    return error_line(log) or "it ended without a result (cancelled before it started?)"


def wait_for(jobs: list, numbered: list, record: dict, sweep_dir: Path) -> dict:
    """Poll until every job has left Slurm's queue: {job number: its JobReturn} (a job that ended without one,
    cancelled or killed, failed: with the last error line of its log)."""
    from hydra.core.utils import JobReturn, JobStatus

    pending = {job.job_id: (number, overrides, job) for (number, overrides), job in zip(numbered, jobs)}
    returns: dict[int, JobReturn] = {}
    gone_since: dict[str, int] = {}
    while pending:
        states = queued(list(pending))
        for job_id, (number, overrides, job) in list(pending.items()):
            outcome = result_of(job.paths.result_pickle)
            if outcome is None and (states is None or job_id in states):
                continue
            if outcome is None:  # left the queue without a result: give the file system a few polls to show it
                gone_since[job_id] = gone_since.get(job_id, 0) + 1
                if gone_since[job_id] < 3:
                    continue
            del pending[job_id]
            if outcome is not None and outcome[0] == "success":
                returns[number] = outcome[1]
                continue
            why = _why_failed(job_dir_of(sweep_dir, number), Path(record[str(number)]["stderr"]), outcome)
            error = CircuitlabError(f"multirun job {number} (Slurm job {job_id}) failed: {why}")
            returns[number] = JobReturn(overrides=overrides, status=JobStatus.FAILED, _return_value=error)
        if pending:
            time.sleep(POLL_SECONDS)
    return returns
