"""Sweeps on a real Slurm scheduler: a single-node cluster on this machine (scripts/local_slurm.sh, started here when
it is not running, stopped again after), through `hydra/launcher=slurm`.

- one sharded sweep meets preemption (`scontrol requeue`), a time limit (submitit's USR2 checkpoint-and-requeue,
  sent here with `scancel --signal=USR2`; the real timer in the slow test) and a cancel (`scancel`): the requeued jobs
  resume from their finished chunks (their logs say how many), the cancelled one shows failed and why in the index
  and `circuitlab status`; rerunning the command computes only what is missing, and the merge is byte-identical
  to the unsharded run;
- sbatch's refusals are one line naming the launcher field, exit 2, nothing made; `gpus_per_node: auto` runs on a
  partition without GPUs;
- `sweep.num_shards=auto` packs the points into jobs, job arrays stay under MaxArraySize; submit-and-leave
  (`wait: false`) and `circuitlab status` on running, held and cancelled jobs.
The jobs are short (the toy model); Slurm's 2-minute hold on requeued jobs is lifted with `scontrol update
StartTime=now` so that the test does not wait it out.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from circuitlab.merge import merge_shards
from tests.test_scale_out import QUIET, assert_same_run, run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "local_slurm.sh"
SWEEP = ["+experiment=ioi_patching", "task.n_prompts=16", *QUIET]


def why_no_slurm() -> str | None:
    missing = [p for p in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(p) is None]
    if missing:
        return f"no Slurm here ({', '.join(missing)} not found: apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local Slurm cluster runs its daemons as root (scripts/local_slurm.sh)"
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the launcher hydra/launcher=slurm builds on)
    except ImportError:
        return "hydra-submitit-launcher is not installed (pip install 'circuitlab[cluster]')"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """SLURM_CONF of the running local cluster (started with MaxArraySize 2 when this fixture starts it, so that
    sweeps of three or more jobs are cut into several arrays)."""
    reason = why_no_slurm()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "CIRCUITLAB_SLURM_MAX_ARRAY_SIZE": os.environ.get("CIRCUITLAB_SLURM_MAX_ARRAY_SIZE", "2")}
    running = subprocess.run(["bash", str(SCRIPT), "status"], capture_output=True, text=True, env=env).returncode == 0
    if not running:
        started = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, env=env, timeout=120)
        if started.returncode != 0:
            pytest.skip(f"the local Slurm cluster did not start: {started.stderr.strip().splitlines()[-1:]}")
    conf = subprocess.run(["bash", str(SCRIPT), "env"], capture_output=True, text=True, env=env).stdout.split("=", 1)[1].strip()
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "OMP_NUM_THREADS", "CIRCUITLAB_TIMINGS")}
    os.environ.update(SLURM_CONF=conf, OMP_NUM_THREADS="1", CIRCUITLAB_TIMINGS=str(tmp_path_factory.mktemp("timings") / "t.jsonl"))
    from circuitlab import slurm

    slurm.scheduler_config.cache_clear()
    yield conf
    for key, value in saved.items():
        os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    if not running:
        subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, env=env, timeout=60)


def cli(args: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def slurm(*args: str) -> str:
    out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def queue() -> dict[str, str]:
    lines = slurm("squeue", "-h", "-r", "-o", "%i|%T").splitlines()
    return dict(line.split("|") for line in lines if "|" in line)


def wait_until(condition, what: str, timeout: float = 120.0):
    start = time.time()
    while time.time() - start < timeout:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"waited {timeout:.0f} s for {what}; queue: {queue()}")


def chunk_files(job_dir: Path) -> int:
    return len(list((job_dir / "chunks").glob("*.pt")))


def release(job_id: str) -> None:
    """A requeued job waits 2 minutes before Slurm starts it again (its EligibleTime): start it now."""
    slurm("scontrol", "update", f"jobid={job_id}", "StartTime=now")


def accounting_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "accounting" in ln.lower() or "sacct" in ln.lower()]


@pytest.mark.slurm
def test_sweep_survives_preemption_time_limit_and_cancel(cluster, tmp_path):
    from circuitlab.slurm import max_array_size
    from circuitlab.status import status_lines

    sweep = tmp_path / "sweep"
    args = ["run", "-m", "hydra/launcher=slurm", *SWEEP, "sweep.num_shards=auto", "sweep.points_per_job=10", f"hydra.sweep.dir={sweep}",
            "hydra.launcher.timeout_min=10"]  # under 10 minutes, submitit counts any USR2 as the time limit's
    go = tmp_path / "go"
    submitted = cli([*args, "hydra.launcher.wait=false"], tmp_path, {"CIRCUITLAB_WAIT_AFTER_CHUNKS": "2", "CIRCUITLAB_WAIT_FOR": str(go)})
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    assert len(accounting_lines(submitted.stderr)) <= 1 and "Traceback" not in submitted.stderr, submitted.stderr
    assert f"circuitlab status {sweep}" in submitted.stderr  # submit and leave: how to follow it
    assert "sweep.num_shards=auto: 3 jobs, about 10 points a job (30 points in 12 chunks)" in submitted.stderr  # packed
    record = json.loads((sweep / "slurm_jobs.json").read_text())
    ids = [record[str(n)]["slurm_job"] for n in range(3)]
    assert [record[str(n)]["overrides"][-2:] for n in range(3)] == [["sweep.num_shards=3", f"sweep.shard={n}"] for n in range(3)]
    assert len({i.split("_")[0] for i in ids}) == -(-3 // max_array_size())  # arrays of at most MaxArraySize tasks
    jobs = [sweep / str(n) for n in range(3)]

    # each job holds after 2 chunks: job 0 is preempted (scontrol requeue), job 1 gets the time-limit signal submitit
    # checkpoints on (USR2), job 2 is cancelled
    wait_until(lambda: all(chunk_files(d) >= 2 for d in jobs), "every job to finish 2 chunks")
    status = status_lines(sweep)
    planned = [json.loads((d / "chunks" / "plan.json").read_text())["chunks"] for d in jobs]
    assert status[0] == f"{sweep}: 3 jobs: 3 running" and f"running     2 of {planned[0]} chunks done (Slurm job {ids[0]})" in status[1], status
    script = (sweep / ".submitit" / ids[0].split("_")[0] / f"{ids[0].split('_')[0]}_submission.sh").read_text()
    assert "#SBATCH --gpus" not in script and "#SBATCH --signal=USR2@" in script  # gpus_per_node=auto: this partition has none
    slurm("scontrol", "requeue", ids[0])
    slurm("scancel", "--signal=USR2", ids[1])
    slurm("scancel", ids[2])
    wait_until(lambda: (q := queue()).get(ids[0]) == "PENDING" and q.get(ids[1]) == "PENDING" and ids[2] not in q,
               "jobs 0 and 1 to be requeued, job 2 to be gone")  # only then may the jobs go on past their 2 chunks
    go.touch()
    release(ids[0])
    release(ids[1])
    wait_until(lambda: all((d / "manifest.json").is_file() for d in jobs[:2]) and not {*ids[:2]} & set(queue()), "jobs 0 and 1 to finish")
    wait_until(lambda: ids[2] not in queue() and (sweep / "index.html").is_file(), "job 2 to leave the queue")

    for job_dir in jobs[:2]:
        log = (job_dir / "hydra_app.log").read_text()
        assert re.search(rf"resuming {re.escape(str(job_dir))}: \d+ finished sweep points in 2 chunk files", log), log
        assert json.loads((job_dir / "manifest.json").read_text())["chunks"]["chunks_loaded"] == 2
    assert "this job is timed-out" in (sweep / ".submitit" / ids[1] / f"{ids[1]}_0_log.err").read_text()  # submitit's checkpoint path
    assert "terminated (SIGTERM)" in (jobs[0] / "hydra_app.log").read_text()  # requeue: SIGTERM, then the job again

    # job 2: failed, and why, in the index and in `circuitlab status`
    index = (sweep / "index.html").read_text()
    assert "status-failed" in index and re.search(r"terminated \(SIGTERM\): 2 finished chunks kept", index)
    rows = pd.read_csv(sweep / "index.csv", dtype=str, keep_default_na=False).set_index("job")
    assert list(rows["status"]) == ["done", "done", "failed"] and "terminated (SIGTERM)" in rows.loc["2", "problem"]
    status = cli(["status", str(sweep)], tmp_path)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0] == f"{sweep}: 3 jobs: 2 done, 1 failed", status.stdout
    assert re.search(r"job 2\s+failed\s+.*terminated \(SIGTERM\).*\[2 chunks kept\]", status.stdout), status.stdout

    # the same command again: only what is missing is computed
    again = cli(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    chunks = [json.loads((d / "manifest.json").read_text())["chunks"] for d in jobs]
    assert [c["chunks_computed"] for c in chunks] == [planned[0] - 2, planned[1] - 2, planned[2] - 2]  # the first run's
    assert chunks[2]["chunks_loaded"] == 2 and "2 of 3 jobs finished already" in again.stderr  # jobs 0, 1 not submitted again
    assert status_lines(sweep)[0] == f"{sweep}: 3 jobs: 3 done"

    merge_shards(jobs, tmp_path / "merged")
    run(SWEEP, tmp_path / "whole")
    assert_same_run(tmp_path / "whole", tmp_path / "merged")  # byte for byte


@pytest.mark.slurm
@pytest.mark.parametrize("setting, field, words", [
    ("hydra.launcher.gpus_per_node=1", "gpus_per_node", "Invalid generic resource (gres) specification"),
    ("hydra.launcher.partition=nope", "partition", "invalid partition"),
    ("hydra.launcher.mem_gb=100000", "mem_gb", "Requested node configuration is not available"),
])
def test_sbatch_refusals_are_one_line(cluster, tmp_path, capsys, setting, field, words):
    from circuitlab import cli as circuitlab_cli

    with pytest.raises(SystemExit) as exit_code:
        circuitlab_cli.main(["run", "-m", "hydra/launcher=slurm", setting, *SWEEP, "seed=0,1", f"results_dir={tmp_path / 'out'}"])
    assert exit_code.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"circuitlab: error: hydra.launcher.{field}=") and words in lines[0], lines
    assert not (tmp_path / "out").exists() and not queue()


@pytest.mark.slurm
def test_held_then_cancelled_jobs(cluster, tmp_path):
    """Jobs submitted held are pending in `circuitlab status` while the submitting command waits; cancelled before they
    started, the wait ends in one line per job and how to finish them (exit 1, no traceback), and they failed."""
    from circuitlab.status import status_lines

    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "circuitlab.cli", "run", "-m", "hydra/launcher=slurm", *SWEEP, "seed=0,1", f"hydra.sweep.dir={sweep}",
            "+hydra.launcher.additional_parameters.hold=true"]
    waiting = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: (sweep / "slurm_jobs.json").is_file(), "the jobs to be submitted")
        status = status_lines(sweep)
        assert status[0] == f"{sweep}: 2 jobs: 2 pending" and "not started yet (Slurm job" in status[1], status
        arrays = sorted({r["slurm_job"].split("_")[0] for r in json.loads((sweep / "slurm_jobs.json").read_text()).values()})
        slurm("scancel", *arrays)
        _, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("circuitlab: error: multirun job")]
    assert len(lines) == 2 and all("failed: it ended without a result (cancelled before it started?)" in ln for ln in lines), err
    assert f"2 of 2 jobs failed. Rerun the same command with hydra.sweep.dir={sweep}" in err
    status = status_lines(sweep)
    assert status[0] == f"{sweep}: 2 jobs: 2 failed" and "left the Slurm queue without starting" in status[1], status


@pytest.mark.slurm
@pytest.mark.slow
def test_time_limit_requeues_through_submitit(cluster, tmp_path):
    """Slurm's own timer: a 1-minute job whose USR2 comes 30 s before its end is requeued by submitit's checkpoint
    and finishes in its second run, from its finished chunks."""
    sweep = tmp_path / "sweep"
    go = tmp_path / "go"
    args = ["run", "-m", "hydra/launcher=slurm", *SWEEP, "seed=0", f"hydra.sweep.dir={sweep}", "hydra.launcher.timeout_min=1",
            "hydra.launcher.signal_delay_s=30", "hydra.launcher.wait=false"]
    out = cli(args, tmp_path, {"CIRCUITLAB_WAIT_AFTER_CHUNKS": "2", "CIRCUITLAB_WAIT_FOR": str(go)})
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = json.loads((sweep / "slurm_jobs.json").read_text())["0"]["slurm_job"]
    err = sweep / ".submitit" / job_id / f"{job_id}_0_log.err"
    wait_until(lambda: err.is_file() and "this job is timed-out" in err.read_text(), "Slurm's time-limit signal", timeout=150)
    go.touch()
    release(job_id)
    wait_until(lambda: (sweep / "0" / "manifest.json").is_file(), "the requeued job to finish", timeout=150)
    assert json.loads((sweep / "0" / "manifest.json").read_text())["chunks"]["chunks_loaded"] == 2


def test_gpus_auto_asks_for_a_gpu_only_where_there_are_gpus(monkeypatch):
    from circuitlab import slurm as slurm_module

    found = {"gpu": {"default": False, "gres": {"gpu:a100:4"}, "cpus": 64, "mem_mb": 512000},
             "cpu": {"default": True, "gres": set(), "cpus": 64, "mem_mb": 256000}}
    monkeypatch.setattr(slurm_module, "partitions", lambda: found)
    assert slurm_module.resolve_gpus("auto", "gpu", {"auto"}) == 1
    assert slurm_module.resolve_gpus("auto", "gpu", {"cpu"}) is None  # device=cpu jobs ask for none
    assert slurm_module.resolve_gpus("auto", None, {"cuda"}) is None  # the default partition has none
    assert slurm_module.resolve_gpus(2, "cpu", {"cpu"}) == 2  # a number is kept as given
