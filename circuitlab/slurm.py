"""Slurm behind `hydra/launcher=slurm`: what the scheduler says, the checks made before anything is submitted, and
what a job does on Slurm's signals.

The launcher class Hydra instantiates is `hydra_plugins.circuitlab_slurm.CircuitlabSlurmLauncher` (Hydra accepts
launchers from its `hydra_plugins` package only); it is submitit's Slurm launcher with its `launch` replaced by
`slurm_launch.launch`. Here:
- `check_submission`: the pre-flight (`circuitlab run -m`, before Hydra makes the sweep dir) hands the job script to
  `sbatch --test-only`; a refusal ends in one line naming the launcher field and sbatch's reason (exit 2), found by
  retrying with each field left to the cluster's default.
- `gpus_per_node: auto` (the default) asks for one GPU per job only where the partition has GPUs and the jobs do not
  run with `device=cpu`.
- `scheduler_config` / `max_array_size` / `partitions` / `queued`: what `scontrol show config`, `sinfo` and `squeue`
  say (the submission and its wait are in `slurm_launch.py`).
- inside a job, `in_job` turns Slurm's SIGTERM (scancel, requeue, preemption) into the run's one line, written to the
  job's log, so the sweep index says why a job stopped.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import tempfile
from pathlib import Path

from circuitlab.errors import CircuitlabError
from circuitlab.runfiles import JOBS_FILE, error_line  # noqa: F401  (re-exported: the sweep's job record, a log's error line)

log = logging.getLogger("circuitlab")
LAUNCHER_TARGET = "hydra_plugins.circuitlab_slurm.CircuitlabSlurmLauncher"
# launcher fields tried one at a time (left to the cluster's default) to find the one sbatch refuses
RESOURCE_FIELDS = ("gpus_per_node", "partition", "mem_gb", "cpus_per_task", "timeout_min", "qos", "account", "constraint", "gres",
                   "exclude", "mem_per_cpu", "mem_per_gpu", "gpus_per_task", "cpus_per_gpu", "nodes", "tasks_per_node",
                   "additional_parameters")
NOT_SBATCH = ("wait",)  # circuitlab's own launcher fields


def _run(command: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@functools.lru_cache(maxsize=1)
def scheduler_config() -> dict[str, str]:
    """`scontrol show config` as {key: value} ({} where it does not answer)."""
    try:
        out = _run(["scontrol", "show", "config"])
    except (OSError, subprocess.SubprocessError):
        return {}
    found = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and " " not in key.strip():
            found[key.strip()] = value.strip()
    return found


def max_array_size() -> int:
    """The most tasks one job array may hold here (MaxArraySize; Slurm's default 1001)."""
    value = scheduler_config().get("MaxArraySize", "1001")
    return int(value) if value.isdigit() and int(value) > 0 else 1001


def accounting_enabled() -> bool:
    return scheduler_config().get("AccountingStorageType", "accounting_storage/none") != "accounting_storage/none"


def partitions() -> dict[str, dict]:
    """Each partition's generic resources, CPUs and memory per node (from `sinfo`); the default one is marked."""
    try:
        out = _run(["sinfo", "-h", "-o", "%P|%G|%c|%m"])
    except (OSError, subprocess.SubprocessError):
        return {}
    found: dict[str, dict] = {}
    for line in out.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 4:
            continue
        name, gres, cpus, memory = parts
        default = name.endswith("*")
        entry = found.setdefault(name.rstrip("*"), {"default": default, "gres": set(), "cpus": 0, "mem_mb": 0})
        entry["gres"].update(g for g in gres.split(",") if g and g != "(null)")
        entry["cpus"] = max(entry["cpus"], _leading_int(cpus))
        entry["mem_mb"] = max(entry["mem_mb"], _leading_int(memory))
    return found


def _leading_int(text: str) -> int:
    digits = "".join(ch for ch in text.split("+")[0] if ch.isdigit())
    return int(digits) if digits else 0


def partition_info(name: str | None) -> tuple[str | None, dict]:
    """(the partition's name, its sinfo entry): the named one, else the cluster's default."""
    found = partitions()
    if name is None:
        name = next((p for p, e in found.items() if e["default"]), None)
    return name, found.get(name or "", {})


def resolve_gpus(value, partition: str | None, devices: set[str]) -> int | None:
    """`gpus_per_node: auto`: one GPU where the partition's nodes have GPUs and the jobs may use one (no job runs with
    device=cpu), else none; a number or null is kept as given."""
    if value != "auto":
        return value
    if devices and all(str(d) == "cpu" for d in devices):
        return None
    _, info = partition_info(partition)
    return 1 if any(g.split(":")[0] == "gpu" for g in info.get("gres", ())) else None


def sbatch_parameters(params: dict, devices: set[str]) -> tuple[dict, dict]:
    """The launcher's fields as submitit takes them, as Hydra's submitit launcher passes them: (the executor's init
    arguments, its update_parameters arguments), with `gpus_per_node: auto` resolved."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    params = {k: v for k, v in params.items() if k not in NOT_SBATCH}
    params["gpus_per_node"] = resolve_gpus(params.get("gpus_per_node"), params.get("partition"), devices)
    init = {"folder": params.pop("submitit_folder"), "slurm_max_num_timeout": params.pop("max_num_timeout", 0)}
    generic = set(OmegaConf.structured(BaseQueueConf).keys())
    return init, {k if k in generic else f"slurm_{k}": v for k, v in params.items()}


def executor(params: dict, devices: set[str], folder: str | None = None):
    """submitit's Slurm executor set up as the launcher would submit with `params`."""
    import submitit

    init, update = sbatch_parameters(params, devices)
    if folder is not None:
        init["folder"] = folder
    built = submitit.AutoExecutor(cluster="slurm", **init)
    built.update_parameters(**update)
    return built


def sbatch_refusal(params: dict, devices: set[str]) -> str | None:
    """sbatch's reason for refusing the job script these launcher settings make (`sbatch --test-only`), or None."""
    with tempfile.TemporaryDirectory(prefix="circuitlab-sbatch-") as folder:
        text = executor(params, devices, folder)._executor._make_submission_file_text("true", "test")
        script = Path(folder) / "test.sh"
        script.write_text(text)
        try:
            out = _run(["sbatch", "--test-only", str(script)])
        except (OSError, subprocess.SubprocessError) as err:
            return f"sbatch did not answer ({err})"
    return None if out.returncode == 0 else reason(out.stderr or out.stdout)


def reason(text: str) -> str:
    """sbatch's own words: its error lines without their prefixes, once each."""
    lines = []
    for line in text.splitlines():
        line = line.strip()
        for prefix in ("sbatch: error: Batch job submission failed:", "sbatch: error:", "allocation failure:", "sbatch:"):
            if line.startswith(prefix):
                line = line[len(prefix):].strip()
                break
        if line and line.lower() not in (seen.lower() for seen in lines):
            lines.append(line)
    return "; ".join(lines[:2]) or "no reason given"


def check_submission(params: dict, devices: set[str]) -> None:
    """Refuse, in one line naming the launcher field and sbatch's reason, settings sbatch would refuse (or keep
    pending forever); nothing is submitted."""
    why = sbatch_refusal(params, devices)
    if why is None:
        return
    for field in RESOURCE_FIELDS:
        if params.get(field) in (None, {}, "auto") and not (field == "gpus_per_node" and params.get(field) == "auto"):
            continue
        if sbatch_refusal({**params, field: {} if field == "additional_parameters" else None}, devices) is None:
            value = params[field]
            if field == "gpus_per_node":
                value = resolve_gpus(value, params.get("partition"), devices)
            raise CircuitlabError(f"hydra.launcher.{field}={value}: sbatch refuses it: {why}{_context(field, params)}")
    raise CircuitlabError(f"hydra.launcher: sbatch refuses the job: {why}")


def _context(field: str, params: dict) -> str:
    """What the cluster has, for the refused field."""
    name, info = partition_info(params.get("partition"))
    if field == "partition":
        return f" (partitions here: {', '.join(partitions()) or 'none listed'})"
    if not info:
        return ""
    if field == "gpus_per_node":
        gres = ", ".join(sorted(info["gres"])) or "no GPUs"
        return f" (partition {name} has {gres}; gpus_per_node=auto asks for one only where there are GPUs)"
    if field in ("mem_gb", "mem_per_cpu", "mem_per_gpu"):
        return f" (partition {name}'s largest node has {info['mem_mb']} MB)"
    if field in ("cpus_per_task", "cpus_per_gpu", "tasks_per_node"):
        return f" (partition {name}'s largest node has {info['cpus']} CPUs)"
    return ""


def is_slurm_launcher(hydra_cfg) -> bool:
    from omegaconf import OmegaConf

    return OmegaConf.select(hydra_cfg, "hydra.launcher._target_", default=None) == LAUNCHER_TARGET


def launcher_params(hydra_cfg) -> dict:
    """The launcher node as plain values; what only Hydra's run resolves (the sweep dir in submitit_folder, the job
    name) is left out or named plainly, as checking needs neither."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    node = hydra_cfg.hydra.launcher
    params = {}
    for key in node:
        try:
            params[key] = _plain(OmegaConf.select(node, key, throw_on_resolution_failure=True))
        except OmegaConfBaseException:
            params[key] = None
    params.pop("_target_", None)
    params["submitit_folder"], params["name"] = "unused", params.get("name") or "circuitlab"
    return params


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def preflight(hydra_cfgs: list, devices: set[str]) -> None:
    """`circuitlab run -m`'s check, before Hydra makes the sweep dir: each distinct Slurm launcher setting is put to
    `sbatch --test-only`."""
    for hydra_cfg in hydra_cfgs:
        if is_slurm_launcher(hydra_cfg):
            check_submission(launcher_params(hydra_cfg), devices)


def queued(job_ids: list[str]) -> dict[str, str] | None:
    """{array task id: state} of the jobs still in Slurm's queue (pending, running, completing, requeued); None when
    squeue does not answer."""
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = _run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"])
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return {} if "Invalid job id" in out.stderr else None
    states = {}
    for line in out.stdout.splitlines():
        job, _, state = line.partition("|")
        states[job.strip()] = state.strip()
    return states


# --- inside a job --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def in_job():
    """Under a Slurm job: SIGTERM (scancel, requeue, preemption) ends the run as Ctrl-C does, and the run's one line
    (what it kept), or a refusal's, goes to the job's log too. Elsewhere: nothing."""
    if not os.environ.get("SLURM_JOB_ID"):
        yield
        return
    from circuitlab import rundir

    with rundir.sigterm_as_interrupt():
        try:
            yield
        except KeyboardInterrupt as err:
            message = getattr(err, "message", None) or f"terminated ({getattr(err, 'signum', 'SIGTERM')}) before any sweep point was kept"
            log.error("circuitlab: %s", message)
            raise
        except CircuitlabError as err:
            log.error("circuitlab: error: %s", err)
            raise
