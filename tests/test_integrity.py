"""Run-dir integrity: a rerun whose inputs (dataset file, weights) changed is refused with the dir untouched;
damaged chunks are named and recomputed (in a run and in a merge); one process per run dir; files follow the
umask; a failed merge leaves no --out; bad output locations are refused before anything is written; Ctrl-C and
SIGTERM end in one line and the rerun resumes."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from circuitlab import cli
from circuitlab.errors import CircuitlabError
from circuitlab.merge import merge_shards
from circuitlab.models import loading
from circuitlab.models.loading import EMBEDDED_DIR
from circuitlab.run import run_experiment
from tests.cli_refusal import refused

QUIET = ["progress=false", "figures=false"]
SWEEP = ["+experiment=ioi_patching", "task.n_prompts=8", "memory_budget_mb=1", *QUIET]  # 18 chunks on toy-ioi
PAIRS = [
    ("When Mary and John went to the store , John gave the ball to", "When Mary and John went to the store , Anna gave the ball to", "Mary", "John"),
    ("When Tom and Amy went to the park , Amy gave the book to", "When Tom and Amy went to the park , Paul gave the book to", "Tom", "Amy"),
    ("Then Lisa and Mark went to the school , Mark gave the key to", "Then Lisa and Mark went to the school , Emma gave the key to", "Lisa", "Mark"),
    ("After Dan and Sid went to the bank , Sid gave the cup to", "After Dan and Sid went to the bank , Kate gave the cup to", "Dan", "Sid"),
]


def tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, hidden ones (.hydra/, .lock) included."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.rglob("*")) if p.is_file()}




def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _cli(args: list[str], cwd: Path, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})}, **kwargs)


def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    # Ctrl-C's default action even where this test runs in the background (which inherits SIGINT ignored)
    return subprocess.Popen([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _held_after_first_chunk(tmp_path: Path, args: list[str], release: Path) -> subprocess.Popen:
    """A CLI run that stops after storing its first chunk (holding the run dir) until `release` exists."""
    proc = _start(args, tmp_path, {"CIRCUITLAB_WAIT_AFTER_CHUNKS": "1", "CIRCUITLAB_WAIT_FOR": str(release)})
    deadline = time.monotonic() + 120
    while not list((tmp_path / "r" / "chunks").glob("*.pt")):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the held run did not store a chunk: {proc.communicate()[1][-2000:]}")
        time.sleep(0.05)
    return proc


def write_pairs(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(json.dumps({"clean": c, "corrupted": x, "answer": f" {a}", "wrong": f" {w}"}) + "\n" for c, x, a, w in pairs))
    return path


def test_changed_pairs_file_refused_dir_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_pairs(tmp_path / "pairs.jsonl")
    args = ["run", "task=pairs", f"task.path={data}", "sweep=named_positions", "sweep.positions=[END]", *QUIET, "run.dir=r"]
    cli.main(args)
    cli.main(args)  # same inputs: resumes every chunk
    assert manifest(tmp_path / "r")["chunks"]["chunks_computed"] == 0
    before = tree(tmp_path / "r")
    assert ".hydra/config.yaml" in before and "inputs.json" in before

    write_pairs(data, [PAIRS[1], PAIRS[0], *PAIRS[2:]])  # same lines, another order: other prompts, other numbers
    err = refused(args, capsys)
    assert f"{data} changed since this dir's run" in err and "run.resume=false" in err
    assert tree(tmp_path / "r") == before

    cli.main([*args, "run.resume=false"])
    assert manifest(tmp_path / "r")["chunks"]["chunks_loaded"] == 0


def _toy_copy(tmp_path: Path) -> Path:
    model = tmp_path / "model"
    shutil.copytree(EMBEDDED_DIR / "toy-ioi", model)
    return model


def _rewrite_weights(model: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(model / "model.safetensors")
    change(weights)
    save_file(weights, model / "model.safetensors")


def _perturb(weights: dict) -> None:
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1e-3


def test_changed_weights_refused_dir_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _toy_copy(tmp_path)
    args = ["run", *SWEEP, "sweep.layers=[1]", "model=local", f"model.path={model}", "run.dir=r"]
    cli.main(args)
    before = tree(tmp_path / "r")
    _rewrite_weights(model, _perturb)
    err = refused(args, capsys)
    assert f"{model / 'model.safetensors'} changed since this dir's run (sha256 " in err
    assert tree(tmp_path / "r") == before


def test_start_over_with_a_model_that_fails_to_load_changes_nothing(tmp_path, capsys, monkeypatch):
    """run.resume=false into a finished dir, the weights now the wrong shape (loadable header, failing load): refused
    when the model loads, before Hydra rewrites .hydra/ and before run_config.json is touched."""
    monkeypatch.chdir(tmp_path)
    model = _toy_copy(tmp_path)
    args = ["run", *SWEEP, "sweep.layers=[1]", "model=local", f"model.path={model}", "run.dir=r"]
    cli.main(args)
    before = tree(tmp_path / "r")

    def wrong_shape(weights):
        name = next(k for k in sorted(weights) if weights[k].ndim == 2)
        weights[name] = torch.zeros(weights[name].shape[0] + 1, weights[name].shape[1])

    _rewrite_weights(model, wrong_shape)
    # loads are memoised per process (a new process would read the file anew): a fresh memo for this test only
    monkeypatch.setattr(loading, "_load_cached", functools.lru_cache(maxsize=4)(loading._load_cached.__wrapped__))
    err = refused([*args, "run.resume=false", "seed=1"], capsys)
    assert str(model) in err
    assert tree(tmp_path / "r") == before


def _run(overrides: list[str], run_dir: Path) -> dict:
    return run_experiment(cli.compose_config([*overrides, f"run.dir={run_dir}"]), run_dir)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """An undisturbed run of SWEEP (what interrupted, resumed and merged runs must equal byte for byte)."""
    run_dir = tmp_path_factory.mktemp("whole") / "r"
    _run(SWEEP, run_dir)
    return run_dir


def _damage(chunks: list[Path]) -> None:
    """Truncated, empty, garbage, and values changed under their stored digest."""
    truncated, empty, garbage, tampered = chunks[:4]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    empty.write_bytes(b"")
    garbage.write_bytes(b"not a chunk\n" * 10)
    chunk = torch.load(tampered, weights_only=True)
    name = next(iter(chunk["metrics"]))
    chunk["metrics"][name] = chunk["metrics"][name] + 1.0
    torch.save(chunk, tampered)


def test_damaged_chunks_are_named_and_recomputed(tmp_path, caplog, whole):
    total = manifest(whole)["chunks"]["chunks_computed"]
    _run(SWEEP, tmp_path / "r")
    chunks = sorted((tmp_path / "r" / "chunks").glob("*.pt"))
    assert len(chunks) == total > 4
    _damage(chunks)
    with caplog.at_level(logging.WARNING, logger="circuitlab"):
        _run(SWEEP, tmp_path / "r")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 4 and all(any(str(c) in w for w in warnings) for c in chunks[:4])
    assert all("damaged chunk file" in w and "\n" not in w for w in warnings)
    assert "sha256 does not match" in " ".join(warnings)
    summary = manifest(tmp_path / "r")["chunks"]
    assert summary["chunks_loaded"] == total - 4 and summary["chunks_computed"] == 4 and summary["damaged_chunk_files"] == 4
    assert (tmp_path / "r" / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()


def test_merge_survives_a_damaged_shard_chunk(tmp_path, caplog, whole):
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        _run([*SWEEP, f"sweep.shard={i}", "sweep.num_shards=2"], shard)
    damaged = sorted((shards[1] / "chunks").glob("*.pt"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="circuitlab"):
        merged = merge_shards(shards, tmp_path / "merged")
    assert any(str(damaged) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert merged["chunks"]["chunks_computed"] == 1
    assert (tmp_path / "merged" / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()


def test_merge_refuses_shards_of_other_inputs(tmp_path):
    model = _toy_copy(tmp_path)
    preset = [*SWEEP, "sweep.layers=[1]", "model=local", f"model.path={model}", "sweep.num_shards=2"]
    _run([*preset, "sweep.shard=0"], tmp_path / "s0")
    _rewrite_weights(model, _perturb)
    _run([*preset, "sweep.shard=1"], tmp_path / "s1")
    with pytest.raises(CircuitlabError, match=r"model\.safetensors differs between the shards"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _run([*preset, "sweep.shard=0", "run.resume=false"], tmp_path / "s0")  # both shards of today's weights
    _rewrite_weights(model, _perturb)  # ... which change again before the merge
    with pytest.raises(CircuitlabError, match=r"model\.safetensors changed since the shards ran"):
        merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failed_merge_leaves_no_out(tmp_path, monkeypatch):
    import circuitlab.figures

    preset = [*SWEEP, "sweep.layers=[1]", "sweep.num_shards=2"]
    shards = [tmp_path / f"s{i}" for i in range(2)]
    for i, shard in enumerate(shards):
        _run([*preset, f"sweep.shard={i}"], shard)
    for failure in (RuntimeError("figures failed"), KeyboardInterrupt()):
        def fail(run_dir, failure=failure):
            assert (Path(run_dir) / "results.csv").is_file()  # the merge had got far
            raise failure

        monkeypatch.setattr(circuitlab.figures, "render_run", fail)
        with pytest.raises((RuntimeError, KeyboardInterrupt)):
            merge_shards(shards, tmp_path / "deep" / "out")
        assert not (tmp_path / "deep").exists() and not list(tmp_path.glob(".*merging*"))
    monkeypatch.undo()
    merged = merge_shards(shards, tmp_path / "deep" / "out")  # the retry is not refused
    assert merged["chunks"]["chunks_computed"] == 0 and (tmp_path / "deep" / "out" / "results.csv").is_file()


def test_bad_output_locations_refused_before_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("mine")
    assert "results_dir=(empty)" in refused(["run", *SWEEP, "results_dir="], capsys)
    assert f"run.dir={tmp_path / 'a_file'}: not a directory" in refused(["run", *SWEEP, f"run.dir={tmp_path / 'a_file'}"], capsys)
    assert "a_file is a file" in refused(["run", *SWEEP, "run.dir=a_file/sub"], capsys)
    assert "results_dir=a_file" in refused(["run", *SWEEP, "results_dir=a_file"], capsys)
    assert "merge --out=a_file: not a directory" in refused(["merge", "x", "--out", "a_file"], capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"] and (tmp_path / "a_file").read_text() == "mine"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert "cannot be written" in refused(["run", *SWEEP, f"run.dir={locked}/r"], capsys)


def test_second_process_on_a_run_dir_refused(tmp_path, whole):
    """One run holds r (paused after its first chunk); a second on r is refused in one line naming its pid; the
    first, released, finishes with the results of an undisturbed run."""
    args = ["run", *SWEEP, "run.dir=r"]
    first = _held_after_first_chunk(tmp_path, args, tmp_path / "go")
    try:
        second = _cli(args, tmp_path)
        assert second.returncode == 2
        assert second.stderr.strip().splitlines() == [f"circuitlab: error: run.dir=r is in use by another circuitlab process (pid {first.pid}); "
                                                      "wait for it to finish, or choose another run.dir"]
    finally:
        (tmp_path / "go").touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert (tmp_path / "r" / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()


def test_lock_taken_after_the_checks_refuses_too(tmp_path, monkeypatch):
    """The lock is taken (not only looked at) before the run writes: a holder that appears after the checks (here:
    the look skipped) still wins, and the dir is left as it was."""
    from circuitlab import rundir

    cfg = cli.compose_config([*SWEEP, f"run.dir={tmp_path / 'r'}"])
    with rundir.locked(tmp_path / "r"):
        with pytest.raises(CircuitlabError, match=rf"is in use by another circuitlab process \(pid {os.getpid()}\)"):
            run_experiment(cfg, tmp_path / "r")  # refused by the look before the model loads
        monkeypatch.setattr(rundir, "check_free", lambda run_dir: None)
        with pytest.raises(CircuitlabError, match=rf"is in use by another circuitlab process \(pid {os.getpid()}\)"):
            run_experiment(cfg, tmp_path / "r")  # refused by the lock itself
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock"]
    run_experiment(cfg, tmp_path / "r")  # released: runs
    assert (tmp_path / "r" / "results.csv").is_file()


def test_files_follow_the_umask(tmp_path):
    proc = _cli(["run", *SWEEP, "sweep.layers=[1]", "figures=true", "run.dir=r"], tmp_path, umask=0o027)
    assert proc.returncode == 0, proc.stderr
    modes = {str(p.relative_to(tmp_path / "r")): p.stat().st_mode & 0o777 for p in (tmp_path / "r").rglob("*")}
    assert {"results.csv", "run_config.json", "inputs.json", "figures/patching_heatmap.png", ".lock"} <= set(modes)
    assert {name: mode for name, mode in modes.items() if mode != (0o750 if (tmp_path / "r" / name).is_dir() else 0o640)} == {}


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_interrupt_ends_in_one_line_and_resumes(tmp_path, monkeypatch, sig, code, word, whole):
    args = ["run", *SWEEP, "run.dir=r"]
    proc = _held_after_first_chunk(tmp_path, args, tmp_path / "never")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    run_dir = tmp_path / "r"  # as Hydra hands it on: absolute
    assert err.strip().splitlines() == [f"circuitlab: {word}: 1 finished chunk kept in {run_dir}; rerun the same command with run.dir={run_dir} to resume"]
    assert not list((tmp_path / "r").rglob("*.tmp*"))
    monkeypatch.chdir(tmp_path)
    cli.main(args)  # the rerun resumes
    assert manifest(tmp_path / "r")["chunks"]["chunks_loaded"] == 1
    assert (tmp_path / "r" / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()


KEEPS_CHUNKS = [  # one quick run per method (and per config that decides), with what it keeps
    (["+experiment=ioi_patching", "sweep.layers=[1]"], True),
    (["+experiment=toy_resample_scales"], True),
    (["+experiment=ioi_attribution", "sweep.layers=[1]"], True),
    (["+experiment=ioi_attribution", "sweep.layers=[1]", "method.compare_exact=false"], False),
    (["+experiment=ioi_name_vanilla", "sweep.layers=[1]", "task.n_train=20", "task.n_prompts=20"], True),
    (["+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[END]", "task.n_train=20", "task.n_prompts=20", "method.epochs=1"], False),
    (["+experiment=ioi_dla"], False),
    (["+experiment=ioi_eap"], False),
    (["+experiment=ioi_eap_ig"], False),
    (["+experiment=ioi_edge_patching"], True),
    (["+experiment=ioi_path_to_name_movers"], True),
]


@pytest.mark.parametrize("overrides, keeps", KEEPS_CHUNKS, ids=lambda v: " ".join(v) if isinstance(v, list) else str(v))
def test_what_a_method_says_it_keeps_is_what_it_writes(tmp_path, overrides, keeps):
    """An interrupted run's line says "N finished chunks kept ... to resume" or "keeps no partial results" from the
    method's `keeps_chunks(cfg)`; each method's run writes chunk files exactly when it says it keeps them."""
    from circuitlab.methods import registry

    defaults = ["task.n_prompts=8"] if not any(o.startswith("task.n_prompts") for o in overrides) else []
    cfg = cli.compose_config([*overrides, *defaults, *QUIET])
    assert registry.get(cfg.method.name).keeps_chunks(cfg) is keeps
    run_experiment(cfg, tmp_path / "r")
    assert bool(list((tmp_path / "r" / "chunks").glob("*.pt"))) is keeps


def test_sigterm_during_das_training_says_nothing_is_kept(tmp_path):
    """DAS keeps nothing until it ends: a SIGTERM while it trains says so (not "chunks kept ... to resume"), and the
    rerun the line suggests starts over and finishes."""
    args = ["run", "+experiment=ioi_name_das", "sweep.layers=[1]", "sweep.positions=[END]", "task.n_train=20", "task.n_prompts=20",
            "method.epochs=400", *QUIET, "run.dir=r"]  # a few seconds of training
    proc = _start(args, tmp_path, {})
    log, deadline = tmp_path / "r" / "hydra_app.log", time.monotonic() + 120
    while not (log.is_file() and "das: cached in" in log.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"DAS did not start training: {proc.communicate()[1][-2000:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    run_dir = tmp_path / "r"
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [f"circuitlab: terminated (SIGTERM): method=das keeps no partial results (it writes them when it "
                                        f"ends), so nothing is kept in {run_dir}; rerun the same command to start over (run.dir={run_dir} "
                                        "reuses that dir)"]
    assert not (run_dir / "results.csv").exists() and not list(run_dir.rglob("chunks/*.pt"))
    proc = _cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert manifest(run_dir)["chunks"]["chunks_loaded"] == 0 and (run_dir / "results.csv").is_file()


def test_pretrained_inputs_come_from_the_cache_snapshot(tmp_path, monkeypatch):
    """A pretrained name in the Hugging Face cache: its snapshot's weights, config and tokenizer are the inputs, an
    LFS blob by the sha256 its name is (not read); not in the cache: the name alone, which is not compared."""
    from circuitlab import inputs

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    weights = b"weights"
    digest = hashlib.sha256(weights).hexdigest()
    (blobs / digest).write_bytes(weights)
    (blobs / ("0" * 40)).write_text("{}")  # a small file: its blob is named by git's sha1, so it is read
    (snapshot / "model.safetensors").symlink_to(blobs / digest)
    (snapshot / "config.json").symlink_to(blobs / ("0" * 40))
    (snapshot / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(loading, "official_name", lambda name: name)
    monkeypatch.setattr(loading, "cached_snapshot", lambda repo: snapshot if repo == "cached" else None)
    cfg = {"model": {"source": "pretrained", "name": "cached"}, "method": {"name": "activation_patching"}, "task": {"name": "ioi"}}
    found = inputs.digests(cfg)
    assert sorted(found) == ["model/config.json", "model/model.safetensors", "model/tokenizer.json"]
    assert found["model/model.safetensors"]["sha256"] == digest
    assert found["model/config.json"]["sha256"] == hashlib.sha256(b"{}").hexdigest()
    (blobs / digest).write_bytes(b"other")  # changed in place: not seen (the hub's blobs are immutable) ...
    assert inputs.digests(cfg)["model/model.safetensors"]["sha256"] == digest
    (snapshot / "model.safetensors").unlink()
    other = b"new weights"  # ... a new revision of the file is
    (blobs / hashlib.sha256(other).hexdigest()).write_bytes(other)
    (snapshot / "model.safetensors").symlink_to(blobs / hashlib.sha256(other).hexdigest())
    change = inputs.first_change(found, inputs.digests(cfg))
    assert change == (str(snapshot / "model.safetensors"), digest, hashlib.sha256(other).hexdigest())
    uncached = {**cfg, "model": {"source": "pretrained", "name": "elsewhere"}}
    assert inputs.digests(uncached)["model/elsewhere"]["sha256"] is None
    assert inputs.first_change(found, inputs.digests(uncached)) is None


def test_a_shard_that_owns_no_chunk_says_so(tmp_path, caplog):
    """Two points in one chunk, two shards: shard 1 gets nothing, which only the planned chunks show."""
    import logging

    from circuitlab import cli
    from circuitlab.run import run_experiment

    overrides = ["+experiment=ioi_patching", "sweep.layers=[0]", "sweep.positions=[S2,all]", "sweep.streams=[resid_pre]",
                 "sweep.num_shards=2", "sweep.shard=1", "progress=false", "figures=false", f"run.dir={tmp_path / 'run'}"]
    with caplog.at_level(logging.WARNING, logger="circuitlab"):
        run_experiment(cli.compose_config(overrides), tmp_path / "run")
    assert any("sweep.shard=1 owned none of the sweep's 1 chunks" in r.getMessage() for r in caplog.records)
