"""run_experiment(cfg, run_dir): the whole experiment, Hydra-free (callable from a notebook or a test).

Order matters: every check that needs no model runs first (`plan.prepare`: the tokenizer and the prompts, so
positions are checked against real prompt lengths; then the run dir's: writable, not in use, resumable), and only
then the model weights are loaded; nothing in the run dir changes before that. Then the dir is locked for this
process, the method's runner (`runners.py`) does the work and this module writes the run dir. Ctrl-C (or SIGTERM)
ends in `rundir.Interrupted`, whose one line says what was kept (finished chunks, or nothing for a method that keeps
no partial results) and what a rerun does. The manifest records the run's peak memory (`memory.py`).
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from circuitlab import inputs, memory, report, resume, rundir, runfiles, threads
from circuitlab.cost import record_plan, record_timing
from circuitlab.engine import chunks
from circuitlab.engine.batching import memory_budget
from circuitlab import results as rs
from circuitlab.models import loading
from circuitlab.metrics import gap_record
from circuitlab.plan import bos_record, prepare_once
from circuitlab.methods import registry
from circuitlab.tasks import TASKS

log = logging.getLogger("circuitlab")


class PhaseTimer:
    """Wall time per phase, for the manifest."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        yield
        self.seconds[phase] = round(time.perf_counter() - start, 3)


def run_experiment(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict:
    """Run one experiment into `run_dir`; returns the manifest. `overrides`, the command line's (or the notebook
    call's), are recorded in the manifest for the report's command that reproduces the run."""
    run_dir = Path(run_dir)
    threads.apply(cfg.get("threads"))  # before any torch work of the run
    timer = PhaseTimer()
    meter = memory.PeakMeter(loading.resolve_device(cfg.device))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    with timer("prepare"):
        plan = prepare_once(cfg)
    shape, pairs, locations = plan.shape, plan.pairs, plan.locations
    device = loading.resolve_device(cfg.device)
    if pairs.dropped:
        log.info("dropped prompt pairs: %s", ", ".join(f"{k}: {v}" for k, v in pairs.dropped.items()))
    log.info(
        "device %s | model %s (%d layers) | %d prompt pairs | %d sweep points",
        device, cfg.model.name, shape.n_layers, pairs.n_pairs, len(locations),
    )
    templates = templates_used(cfg)
    if templates:
        log.info("templates: %s (%s)", ", ".join(templates["templates"]), templates["note"])
    resume.check_run_dir(cfg, run_dir, results_dir=False)  # refused here, before the model loads, with nothing written
    log.info("loading the model (%s)", f"{cfg.model.name}{f' from {cfg.model.path}' if cfg.model.get('path') else ''}")
    with timer("load_model"):  # before the run dir is touched: a checkpoint that fails to load changes nothing there
        model = loading.load_model(cfg.model, device=device)
    memory.release_freed()  # the checkpoint's freed copies go back to the system before the method allocates
    log.info("model ready in %.1f s (%.1f MB of weights, peak memory %d MB)", timer.seconds["load_model"], memory.weights_mb(model),
             meter.mark("load_model"))
    with rundir.locked(run_dir):
        return _run_locked(cfg, run_dir, plan, model, device, timer, overrides, meter)


def _run_locked(cfg: DictConfig, run_dir: Path, plan, model, device: str, timer: PhaseTimer, overrides: list[str] | None = None,
                meter: memory.PeakMeter | None = None) -> dict:
    pairs, locations = plan.pairs, plan.locations
    store, finished = None, False
    try:
        store = resume.open_store(cfg, run_dir)
        cost = record_plan(cfg, plan, run_dir)  # chunks/plan.json: the chunk count `circuitlab status` counts against
        with timer("sweep"), chunks.active(store):
            output = registry.get(cfg.method.name).hooks.run(cfg, plan, model)
        if store.num_shards > 1 and store.planned <= store.shard:
            log.warning("sweep.shard=%d owned none of the sweep's %d chunks (num_shards=%d): its results are NaN; "
                        "use fewer shards", store.shard, store.planned, store.num_shards)
        finished = True
        memory_record = None
        if meter is not None:
            meter.mark("method")
            memory_record = meter.record(model, memory_budget(device, cfg.memory_budget_mb))
        return _write_run(cfg, run_dir, plan, model, device, timer, store, output, overrides, memory_record, cost)
    except KeyboardInterrupt as err:
        rundir.clear_progress_bars()
        if store is None:
            raise
        signum = rundir.interrupted_by(err)
        keeps = registry.get(cfg.method.name).keeps_chunks(cfg)
        raise rundir.Interrupted(rundir.kept_message(run_dir, signum, store.kept(), finished, keeps, cfg.method.name), signum) from None


def _write_run(cfg, run_dir, plan, model, device, timer, store, output, overrides, memory_record: dict | None = None, cost=None) -> dict:
    pairs, locations = plan.pairs, plan.locations
    with timer("write_results"):
        tables = {"results.csv": rs.tidy_frame(output.rows), **output.tables}
        rs.write_csv(run_dir / "results.csv", tables["results.csv"])
        rs.write_tensors(run_dir / "results.pt", output.tensors)
        rs.write_tensors(run_dir / "dataset.pt", pairs.to_tensors())
        for name, frame in output.tables.items():
            rs.write_csv(run_dir / name, frame)
        for name, data in output.tensor_files.items():
            rs.write_tensors(run_dir / name, data)
        for name, data in output.json_files.items():
            rs.write_json(run_dir / name, data)
        names = getattr(TASKS.get(cfg.task.name), "PROMPT_NAMES", ("clean", "corrupted"))
        for name, text in output.text_files.items():
            rs.write_text(run_dir / name, text)
        rs.write_json(run_dir / report.EXAMPLES_FILE, examples(pairs, plan.tokenizer, names=list(names)))
    gap = gap_record(output.clean, output.corrupted)  # the degenerate-baseline rule (metrics.py): said once, recorded
    if gap is not None:
        log.warning("%s", gap["reason"])
    figures = []
    if cfg.figures:
        from circuitlab.figures import render_run

        log.info("drawing the figures")
        with timer("figures"):
            figures = [str(p) for p in render_run(run_dir)]
        log.info("%d figure files in %.1f s", len(figures), timer.seconds["figures"])
    manifest = {
        "experiment": cfg.name,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "model": loading.describe(model),
        "device": device,
        "threads": threads.record(cfg.get("threads")),
        "seed": cfg.seed,
        "n_prompt_pairs": pairs.n_pairs,
        "dropped_prompt_pairs": pairs.dropped,
        "n_sweep_points": len(locations),
        "shard": {"index": cfg.sweep.get("shard", 0), "num_shards": cfg.sweep.get("num_shards", 1)},
        "bos": bos_record(plan.tokenizer, cfg.model.get("bos", "tokenizer")),
        "chunks": store.summary(),
        "inputs": inputs.digests(cfg),
        "baselines": {"clean": output.clean, "corrupted": output.corrupted},
        **({"baseline_gap": gap} if gap is not None else {}),
        **({"templates": templates_used(cfg)} if templates_used(cfg) else {}),
        **output.extra,
        **({"overrides": list(overrides)} if overrides is not None else {}),
        "versions": rs.package_versions(),
        "git_commit": rs.git_commit(Path(__file__).parent),
        "wall_time_seconds": timer.seconds,
        **({"memory": memory_record} if memory_record else {}),
        "files": ["results.csv", "results.pt", "dataset.pt", resume.CONFIG_FILE, inputs.INPUTS_FILE, *output.tables, *output.tensor_files,
                  *output.json_files, *output.text_files, report.EXAMPLES_FILE, *[str(Path(f).relative_to(run_dir)) for f in figures], report.REPORT_FILE],
        # what the readers check each file against (runfiles): rows and columns of every CSV, bytes of every .pt
        "file_records": runfiles.records(run_dir, tables, ["results.pt", "dataset.pt", *output.tensor_files]),
    }
    rs.write_json(run_dir / "manifest.json", manifest)
    record_timing(cfg, manifest, cost)  # this machine's calibration for `circuitlab plan`'s time estimate
    try:
        report.write_report(run_dir)
    except Exception as err:  # noqa: BLE001  the run's numbers are written; a report that fails says so and no more
        log.warning("report.html not written (%s: %s); `circuitlab report %s` retries", type(err).__name__, err, run_dir)
    if "logit_diff" in output.clean and "logit_diff" in output.corrupted:
        log.info("clean logit diff %.3f | corrupted %.3f", output.clean["logit_diff"], output.corrupted["logit_diff"])
    if memory_record:
        log.info("peak memory %d MB (loading the model %d MB, the method %d MB; %.1f MB of weights, memory_budget_mb=%d)",
                 memory_record["peak_rss_mb"], memory_record["by_phase"]["load_model"], memory_record["by_phase"]["method"],
                 memory_record["weights_mb"], memory_record["budget_mb"])
    log.info("results: %s", run_dir)
    if figures:
        log.info("figures: %s", ", ".join(figures))
    return manifest


def examples(pairs, tokenizer, count: int = 3, names: list[str] | None = None) -> dict:
    """The first `count` prompt pairs token by token, with their named positions and answers, as plain JSON for the
    report and the figures (which read no torch file); `names` call the clean and corrupted prompts what the task calls
    them. Over every pair: `roles` (named position -> {index: pairs with it there}) and `differ` ({index: pairs whose
    two prompts differ there})."""

    def text(ids) -> list[str]:
        return [_token(tokenizer, int(i)) for i in ids]

    chosen = []
    for b in range(min(count, pairs.n_pairs)):
        length = int(pairs.lengths[b])
        answers = {"answer": _token(tokenizer, int(pairs.answer_tokens[b])), "wrong": _token(tokenizer, int(pairs.wrong_tokens[b]))}
        if pairs.corrupted_answer_tokens is not None:
            answers["corrupted answer"] = _token(tokenizer, int(pairs.corrupted_answer_tokens[b]))
        chosen.append({"clean": text(pairs.clean_tokens[b, :length].tolist()), "corrupted": text(pairs.corrupted_tokens[b, :length].tolist()),
                       "length": length, "positions": {k: int(v[b]) for k, v in pairs.named_positions.items()}, "answers": answers,
                       "clean_text": pairs.clean_texts[b] if b < len(pairs.clean_texts) else "",
                       "corrupted_text": pairs.corrupted_texts[b] if b < len(pairs.corrupted_texts) else ""})
    lengths = pairs.lengths.view(-1, 1)
    inside = torch.arange(pairs.width).view(1, -1) < lengths
    differ = ((pairs.clean_tokens != pairs.corrupted_tokens) & inside).sum(0)
    roles = {label: {str(int(i)): int(n) for i, n in zip(*torch.unique(where, return_counts=True))} for label, where in pairs.named_positions.items()}
    return {"n_pairs": pairs.n_pairs, "prompt_names": names or ["clean", "corrupted"], "pairs": chosen,
            "roles": roles, "differ": {str(i): int(n) for i, n in enumerate(differ.tolist()) if n}}


def templates_used(cfg) -> dict | None:
    """The task's record of the prompt templates this config uses (`templates_used` of the task module: names and
    texts, and why that set), or None for a task without templates."""
    describe = getattr(TASKS.get(cfg.task.name), "templates_used", None)
    return describe(cfg.task) if describe is not None else None


def _token(tokenizer, token_id: int) -> str:
    """One token as text (the tokenizer's decoding of it alone; its vocabulary name where decoding fails)."""
    if tokenizer is None:
        return str(token_id)
    try:
        return tokenizer.decode([token_id])
    except Exception:  # noqa: BLE001  tokenizers without decode (id tokenizers): the vocabulary's name, else the id
        try:
            return str(tokenizer.convert_ids_to_tokens([token_id])[0])
        except Exception:  # noqa: BLE001
            return str(token_id)
