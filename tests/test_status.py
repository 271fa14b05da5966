"""`circuitlab status DIR` on a local multirun, from its dirs alone: a job running (chunks done of planned), one that
never started, one killed (failed, with the chunks it kept), then the rerun's done jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from circuitlab.status import status_lines
from tests.test_cost import estimate
from tests.test_scale_out import QUIET


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    start = time.time()
    while not condition():
        assert time.time() - start < timeout, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.2)


def test_status_of_a_local_sweep(tmp_path):
    sweep, go = tmp_path / "sweep", tmp_path / "go"
    args = [sys.executable, "-m", "circuitlab.cli", "run", "-m", "+experiment=ioi_patching", "task.n_prompts=8", *QUIET, "seed=0,1",
            f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CIRCUITLAB_WAIT_AFTER_CHUNKS": "3", "CIRCUITLAB_WAIT_FOR": str(go)}
    planned = len(estimate(["+experiment=ioi_patching", "task.n_prompts=8"]).chunks)
    process = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: len(list((sweep / "0" / "chunks").glob("*.pt"))) >= 3, "job 0 to hold after 3 chunks")
        lines = status_lines(sweep)
        assert lines[0] == f"{sweep}: 2 jobs: 1 running, 1 not started", lines
        assert lines[1].split()[:8] == ["job", "0", "running", "3", "of", str(planned), "chunks", "done"] and lines[1].endswith("[seed=0]"), lines
        assert lines[2].split()[:3] == ["job", "1", "not"] and lines[2].endswith("[seed=1]"), lines
    finally:
        process.send_signal(signal.SIGKILL)  # as the OOM killer would: no line written
        process.wait(timeout=60)
    lines = status_lines(sweep)
    assert lines[0] == f"{sweep}: 2 jobs: 1 failed, 1 not started", lines
    assert "failed      started, never finished (no manifest.json) [3 chunks kept]" in lines[1], lines
    rerun = subprocess.run(args, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    lines = status_lines(sweep)
    assert lines[0] == f"{sweep}: 2 jobs: 2 done", lines
    assert f"{planned - 3} chunks computed, 3 loaded" in lines[1] and f"{planned} chunks computed, 0 loaded" in lines[2], lines
    assert status_lines(sweep / "0")[0].startswith(f"{sweep / '0'}: done ({planned - 3} chunks computed, 3 loaded")
    assert status_lines(tmp_path)[0] == lines[0]  # a dir holding the sweep: each sweep under it


def test_a_job_killed_by_the_scheduler_shows_its_log_line(tmp_path):
    """A Slurm job killed hard (time limit) writes no log of its own: index.html's row and `circuitlab status` say
    why from the scheduler's log that the sweep's job record names."""
    import json

    from circuitlab.report.index import run_summary
    from circuitlab.runfiles import JOBS_FILE

    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / ".hydra").mkdir()  # what a job has written when it is killed before its first chunk
    log = tmp_path / "slurm-12.err"
    line = "slurmstepd: error: *** JOB 12 ON node1 CANCELLED AT 2026-12-07T00:10:00 DUE TO TIME LIMIT ***"
    log.write_text("[00:09:58] scoring edges\n" + line + "\nsrun: error: node1: task 0: Exited with exit code 1\n")
    (sweep / JOBS_FILE).write_text(json.dumps({"0": {"overrides": ["method=eap"], "stderr": str(log)}}))
    row = run_summary(sweep / "0")
    assert row["status"] == "failed" and row["problem"] == line
    assert any(line in text for text in status_lines(sweep))
    (sweep / JOBS_FILE).write_text("{damaged")
    assert run_summary(sweep / "0")["problem"] == "started, never finished (no manifest.json)"
