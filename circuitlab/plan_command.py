"""`circuitlab plan ARGS` (= `circuitlab run ARGS --plan`): what the run or multirun of ARGS will cost, without
loading the weights or computing anything (cost.py), per job and in total; and `sweep.num_shards=auto`, which
packs a sweep's points into jobs before `circuitlab run -m` hands its arguments to Hydra."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from circuitlab.errors import ConfigError

PLAN_HELP = """usage: circuitlab plan [-h] [-m] [--config-dir DIR] [KEY=VALUE ...]   (or: circuitlab run ... --plan)

What `circuitlab run` with the same arguments will cost, without loading the weights or computing anything: the
sweep points, the batched forwards (chunks) and their forward-equivalents, the activation memory of one chunk under
memory_budget_mb, the weights' memory in the model's dtype, and a time estimate where an earlier finished run on this
machine left a calibration.

options:
  -h, --help        show this help message and exit
  -m, --multirun    every job of the multirun, and the total
  --config-dir DIR  your own presets (DIR/experiment/NAME.yaml), as for circuitlab run
  sweep.num_shards=auto sweep.points_per_job=N (or sweep.job_minutes=M), with -m: the jobs that packing makes"""
AUTO_KEYS = ("sweep.points_per_job", "sweep.job_minutes")


def _key(arg: str) -> str:
    return arg.split("=", 1)[0].lstrip("+~")


def _value(args: list[str], key: str) -> str | None:
    found = [a.split("=", 1)[1] for a in args if "=" in a and _key(a) == key]
    return found[-1] if found else None


def overrides_of(args: list[str]) -> list[str]:
    """The `key=value` arguments (flags and the values of `--cfg/-c`, `--package/-p` skipped)."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--cfg", "-c", "--package", "-p", "--experimental-rerun"):
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def auto_shards(args: list[str], config_dirs: Sequence[Path] = ()) -> list[str]:
    """`sweep.num_shards=auto` with `sweep.points_per_job=N` or `sweep.job_minutes=M` (multirun only): the shard
    count chosen from the sweep's plan, written back as `sweep.num_shards=N sweep.shard=range(0,N)`; the packing keys
    are taken out (they are not part of the run's config)."""
    auto = _value(args, "sweep.num_shards") == "auto"
    given = {key: _value(args, key) for key in AUTO_KEYS}
    if not auto:
        for key, value in given.items():
            if value is not None:
                raise ConfigError(key, value, "left out, or given with sweep.num_shards=auto (it sizes the jobs of a sharded multirun)")
        return args
    if not {"-m", "--multirun"} & set(args):
        raise ConfigError("sweep.num_shards", "auto", "a number, or auto in a multirun (circuitlab run -m ...: one job per shard)")
    if _value(args, "sweep.shard") is not None:
        raise ConfigError("sweep.shard", _value(args, "sweep.shard"), "left out with sweep.num_shards=auto (the jobs are shards 0..N-1)")
    points_per_job = _positive(given["sweep.points_per_job"], "sweep.points_per_job", integer=True)
    job_minutes = _positive(given["sweep.job_minutes"], "sweep.job_minutes", integer=False)
    if (points_per_job is None) == (job_minutes is None):
        raise ConfigError("sweep.num_shards", "auto", "auto with one of sweep.points_per_job=N (sweep points per job) or "
                          "sweep.job_minutes=M (each job's sweep time, from this machine's timing calibration)")
    rest = [a for a in args if "=" not in a or _key(a) not in (*AUTO_KEYS, "sweep.num_shards")]
    cfg, plan, cost = _first_job(overrides_of(rest) + ["sweep.num_shards=1"], config_dirs)
    from circuitlab.cost import shards_for

    jobs, why = shards_for(cost, points_per_job, job_minutes, cfg.get("threads"), str(cfg.model.name))
    chunks = f" in {len(cost.chunks)} chunks" if cost.chunks is not None else ""
    print(f"circuitlab: sweep.num_shards=auto: {jobs} job{'s' * (jobs != 1)}, {why} ({cost.points} points{chunks})", file=sys.stderr)
    return [*rest, f"sweep.num_shards={jobs}", "sweep.shard=0" if jobs == 1 else f"sweep.shard=range(0,{jobs})"]


def _positive(value: str | None, key: str, integer: bool):
    if value is None:
        return None
    try:
        number = int(value) if integer else float(value)
    except ValueError:
        number = None
    if number is None or not number > 0 or number != number or number == float("inf"):
        raise ConfigError(key, value, "a positive integer" if integer else "a positive number of minutes")
    return number


def _first_job(overrides: list[str], config_dirs: Sequence[Path]):
    """The config, plan and cost of the sweep's first job (its other jobs differ in what they sweep, not in size)."""
    from circuitlab.compose import check_group_choices, compose_config, is_hydra_override
    from circuitlab.cost import estimate
    from circuitlab.multirun import sweep_jobs
    from circuitlab.plan import prepare_once

    check_group_choices(overrides, config_dirs)
    first = sweep_jobs([o for o in overrides if not is_hydra_override(o)], config_dirs)[0]
    cfg = compose_config(first, config_dirs)
    plan = prepare_once(cfg)
    return cfg, plan, estimate(cfg, plan)


def plan_command(args: list[str]) -> None:
    """Print the cost of `circuitlab run ARGS` (every job of a multirun, and the total)."""
    from circuitlab.compose import check_group_choices, compose_config, config_dirs, is_hydra_override
    from circuitlab.cost import calibration, estimate
    from circuitlab.multirun import sweep_jobs
    from circuitlab.plan import prepare_once

    args = [a for a in args if a != "--plan"]
    if {"-h", "--help"} & set(args):
        print(PLAN_HELP)
        raise SystemExit(0)
    args, dirs = config_dirs(args)
    args = auto_shards(args, dirs)
    overrides = overrides_of(args)
    check_group_choices(overrides, dirs)
    multirun = bool({"-m", "--multirun"} & set(args))
    own = [o for o in overrides if not is_hydra_override(o)]
    jobs = sweep_jobs(own, dirs) if multirun else [own]
    rows = []
    for number, job in enumerate(jobs):
        try:
            cfg = compose_config(job, dirs)
            plan = prepare_once(cfg)
            cost = estimate(cfg, plan)
        except Exception as err:
            from circuitlab.errors import CircuitlabError

            if isinstance(err, CircuitlabError) and multirun:
                raise CircuitlabError(f"multirun job {number} of {len(jobs)}: {err}") from None
            raise
        rows.append((job, cfg, cost, calibration(cost, str(cfg.model.name), cfg.get("threads"))))
    lines = describe_one(*rows[0][1:]) if not multirun else describe_jobs(rows)
    print("\n".join(lines))


def _time(cost, found, chunks) -> tuple[float | None, str]:
    if found is None or chunks is None:
        return None, ""
    seconds = cost.work(chunks) * found.seconds_per_work
    return seconds, f"about {_duration(seconds)} of sweep" + (f" + {_duration(found.load_seconds)} to load" if found.load_seconds else "")


def _mib(value: float) -> str:
    return f"{value:.1f} MiB" if value < 10 else f"{value:.0f} MiB"


def _duration(seconds: float) -> str:
    from circuitlab.cost import duration

    return duration(seconds)


def describe_one(cfg, cost, found) -> list[str]:
    mine = cost.shard_chunks(int(cfg.sweep.get("shard", 0))) if cost.chunks is not None else None
    shard = f", shard {cfg.sweep.get('shard', 0)} of {cost.num_shards}" if cost.num_shards > 1 else ""
    lines = [f"plan: {cfg.name}: method {cfg.method.name} on {cfg.model.name} ({cost.n_layers} layers, {cost.dtype}), "
             f"{cost.n_prompts} prompt pairs of up to {cost.width} tokens, device {cost.device}{shard}",
             f"  points               {cost.points} ({cost.points_what}; {cost.locations} in the sweep)"]
    if mine is not None:
        whole = f" (of {len(cost.chunks)} in the whole sweep)" if cost.num_shards > 1 else ""
        lines += [f"  chunks               {len(mine)} batched forwards of up to {cost.chunk_points} points{whole}",
                  f"  forward-equivalents  {cost.forward_equivalents(mine):.1f} (plain forwards of all {cost.n_prompts} prompts through "
                  f"every layer; the 2 cached runs included)"]
    largest = max((c.points for c in mine), default=0) if mine is not None else 0
    lines += [f"  activation memory    {_mib(largest * cost.point_mb)} for the largest planned chunk ({largest} point{'s' * (largest != 1)}); "
              f"a full chunk ({cost.chunk_points} points) {_mib(cost.chunk_mb)}, under memory_budget_mb={cost.budget_mb}"
              if largest else f"  activation memory    {_mib(cost.chunk_mb)} for a full chunk of {cost.chunk_points} points (memory_budget_mb={cost.budget_mb})",
              f"  weight memory        {cost.weights_mb:.1f} MiB ({cost.n_params:,} parameters in {cost.dtype})"]
    seconds, text = _time(cost, found, mine)
    if seconds is not None:
        lines.append(f"  time                 {text} ({found.how})")
    elif mine is not None:
        lines.append("  time                 not estimated: no finished run on this machine and device has left a calibration yet")
    lines += [f"  note: {note}" for note in cost.notes]
    lines.append("nothing was loaded or computed")
    return lines


def describe_jobs(rows) -> list[str]:
    """One line per job, then the total."""
    from circuitlab.multirun import _varying

    varying = _varying([job for job, *_ in rows])
    lines = [f"plan: {len(rows)} job{'s' * (len(rows) != 1)} (a multirun)",
             f"  {'job':>4} {'points':>8} {'chunks':>7} {'fwd-eq':>8} {'chunk MiB':>10} {'weights MiB':>12} {'time':>9}  overrides"]
    total_points = total_chunks = 0
    total_fe = total_seconds = 0.0
    known_chunks = known_time = True
    notes: list[str] = []
    for number, (job, cfg, cost, found) in enumerate(rows):
        mine = cost.shard_chunks(int(cfg.sweep.get("shard", 0))) if cost.chunks is not None else None
        seconds, _ = _time(cost, found, mine)
        points = sum(c.points for c in mine) if mine is not None and cost.num_shards > 1 else cost.points
        total_points += points
        if mine is None:
            known_chunks = False
        else:
            total_chunks += len(mine)
            total_fe += cost.forward_equivalents(mine)
        if seconds is None:
            known_time = False
        else:
            total_seconds += seconds + (found.load_seconds or 0)
        label = " ".join(o for o in job if o in varying)
        lines.append(f"  {number:>4} {points:>8} {len(mine) if mine is not None else '-':>7} "
                     f"{f'{cost.forward_equivalents(mine):.1f}' if mine is not None else '-':>8} {max((c.points for c in mine), default=0) * cost.point_mb if mine else cost.chunk_mb:>10.1f} {cost.weights_mb:>12.1f} "
                     f"{('~' + _duration(seconds + (found.load_seconds or 0))) if seconds is not None else '-':>9}  {label}")
        notes += [n for n in cost.notes if n not in notes]
    lines.append(f"  {'all':>4} {total_points:>8} {total_chunks if known_chunks else '-':>7} {f'{total_fe:.1f}' if known_chunks else '-':>8} "
                 f"{'':>10} {'':>12} {('~' + _duration(total_seconds)) if known_time else '-':>9}  (job-time summed; jobs run side by side)")
    found = next((f for *_, f in rows if f is not None), None)
    lines.append(f"  time: {found.how}" if found is not None and known_time else
                 "  time: not estimated: no finished run on this machine and device has left a calibration yet")
    lines += [f"  note: {note}" for note in notes]
    lines.append("nothing was loaded or computed")
    return lines
