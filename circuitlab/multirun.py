"""`circuitlab run -m`: every job of a sweep expanded as Hydra's basic sweeper expands it, and composed and planned
(nothing loaded, no dir made) before Hydra makes the sweep dir or runs job 0; a job whose dir (from an earlier
sweep into the same `hydra.sweep.dir`) holds a run it would refuse stops the sweep before anything is written."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from circuitlab.compose import (CONFIG_DIR, check_group_choices, compose_config, compose_hydra, is_hydra_override, one_line_error,
                                register_configs, searchpath_override)
from circuitlab.errors import CircuitlabError, ConfigError


def sweep_jobs(overrides: list[str], config_dirs: Sequence[Path] = ()) -> list[list[str]]:
    """Each job's overrides, expanded from Hydra's sweep syntax (`a=1,2`, `choice(...)`, `range(...)`, `glob(...)`,
    `sort` / `shuffle`) by Hydra's own override parser, in the order of Hydra's basic sweeper (the cartesian product
    of the keys, in the order given; a key given twice keeps its last value)."""
    import itertools

    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    register_configs()
    choices: dict[str, list[str]] = {}
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            if config_dirs:  # glob(...) over a config group lists the user's presets too
                GlobalHydra.instance().config_loader().repository.initialize_sources(_search_path(config_dirs))
            parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
            for override in parser.parse_overrides(list(overrides)):
                key = override.get_key_element()
                if not override.is_sweep_override():
                    choices[key] = [f"{key}={override.get_value_element_as_str()}"]
                elif override.is_discrete_sweep():
                    choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
                    if not choices[key]:
                        raise ConfigError(key, override.input_line.partition("=")[2], "a sweep of one or more values (this one "
                                          "expands to none, so no job would run)")
                else:
                    raise ConfigError(key, override.input_line.partition("=")[2] if override.input_line else "?",
                                      "a value, a comma list, choice(...), range(...) or glob(...) (the basic sweeper runs no "
                                      f"{override.value_type.name.lower().replace('_', ' ')})")
    except HydraException as err:
        raise CircuitlabError(one_line_error(err, list(overrides))) from None
    return [list(job) for job in itertools.product(*choices.values())]

def _search_path(config_dirs: Sequence[Path]):
    """Hydra's config search path with the shipped configs and the user's `--config-dir`s (for globs over groups)."""
    from hydra._internal.utils import create_config_search_path

    search = create_config_search_path(str(CONFIG_DIR))
    for directory in config_dirs:
        search.append("circuitlab-user", f"file://{directory}")
    return search

def preflight_multirun(overrides: list[str], config_dirs: Sequence[Path] = ()) -> list[list[str]]:
    """Every job of `circuitlab run -m` composed and validated (`plan.prepare`: no model loads, no dir is made) before
    Hydra makes the sweep dir or runs job 0; the first bad job ends in one line naming it. Hydra's own side (the
    launcher's settings) is composed too, once per distinct set of `hydra...` overrides."""
    check_group_choices(overrides, config_dirs)
    from circuitlab import resume
    from circuitlab.plan import prepare_once

    jobs = sweep_jobs(overrides, config_dirs)
    hydra_sets, configs, launchers = [], [], []
    for number, job in enumerate(jobs):
        check_group_choices(job, config_dirs)
        own = [o for o in job if not is_hydra_override(o)]
        hydra = [o for o in job if is_hydra_override(o)]
        with _job_label(number, jobs):
            configs.append(compose_config(own, config_dirs))
            prepare_once(configs[-1])
            if hydra not in hydra_sets:
                hydra_sets.append(hydra)
                launchers.append(compose_hydra(job, config_dirs))
    from circuitlab import slurm

    slurm.preflight(launchers, {str(c.device) for c in configs})  # hydra/launcher=slurm: sbatch --test-only, one line
    for number, job_dir in job_dirs(overrides, jobs, config_dirs).items():
        with _job_label(number, jobs):
            resume.preflight(configs[number], job_dir)  # its lock, config and inputs; the model when it holds files
    if any("hydra/launcher=local_gpus" in job for job in jobs):
        import torch

        if not torch.cuda.is_available():
            print("circuitlab: warning: hydra/launcher=local_gpus: no CUDA device is visible, so the jobs run one at a time on "
                  "the CPU", file=sys.stderr)
    return jobs

def _varying(jobs: list[list[str]]) -> set[str]:
    """The overrides that differ between jobs (what names a job in a message)."""
    if len(jobs) < 2:
        return set(jobs[0]) if jobs else set()
    return set().union(*jobs) - set(jobs[0]).intersection(*jobs)


@contextmanager
def _job_label(number: int, jobs: list[list[str]]):
    """A job's one-line error names the job and the overrides that set it apart."""
    try:
        yield
    except CircuitlabError as err:
        own = [o for o in jobs[number] if not is_hydra_override(o)]
        label = " ".join(o for o in own if o in _varying(jobs)) or "its overrides"
        raise CircuitlabError(f"multirun job {number} of {len(jobs)} ({label}): {err}") from None


def job_dirs(overrides: list[str], jobs: list[list[str]], config_dirs: Sequence[Path] = ()) -> dict[int, Path]:
    """The dir of each job that already holds files, by job number, as Hydra's launchers will name it
    (`hydra.sweep.dir` / `hydra.sweep.subdir`, composed by Hydra's own config loader with the job's number); empty
    when the sweep dir does not exist yet (the usual timestamped one) or a dir can only be resolved by Hydra running."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.errors import HydraException
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    search = searchpath_override(config_dirs)
    found: dict[int, Path] = {}
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name="hydra_app"):
            loader = GlobalHydra.instance().config_loader()
            master = loader.load_configuration("config", overrides=[*overrides, *search], run_mode=RunMode.MULTIRUN)
            if not _holds_files(Path(str(master.hydra.sweep.dir))):
                return {}
            for number, job in enumerate(jobs):
                sweep_cfg = loader.load_sweep_config(master, [o for o in job if not is_hydra_override(o)])
                with open_dict(sweep_cfg):
                    sweep_cfg.hydra.job.id = sweep_cfg.hydra.job.num = number
                HydraConfig.instance().set_config(sweep_cfg)
                job_dir = Path(str(OmegaConf.select(sweep_cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(sweep_cfg, "hydra.sweep.subdir"))
                if _holds_files(job_dir):
                    found[number] = job_dir
    except (HydraException, OmegaConfBaseException) as err:  # composed above without error: a resolver of Hydra's own run
        print(f"circuitlab: warning: the jobs' dirs are checked as each job starts ({one_line_error(err, overrides)})", file=sys.stderr)
        return {}
    return found


def _holds_files(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """Every job of the multirun that made `sweep_dir`, from the sweep overrides Hydra recorded in its multirun.yaml,
    expanded as `sweep_jobs` expands them (with the user's --config-dir, for globs); None when that cannot be known
    (the index then lists the started jobs only). Called inside a running Hydra job: Hydra's global state is set
    aside for the expansion and put back (the Hydra instance, and the job name that names the next job's log)."""
    import yaml
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import JobRuntime

    running = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    job_name = JobRuntime.instance().conf.get("name")
    GlobalHydra.instance().clear()
    try:
        hydra = yaml.safe_load((Path(sweep_dir) / "multirun.yaml").read_text(encoding="utf-8"))["hydra"]
        sources = hydra["runtime"]["config_sources"] or []
        dirs = [Path(s["path"]) for s in sources if s.get("schema") == "file" and s.get("provider") not in ("main", "hydra")]
        return sweep_jobs([str(o) for o in hydra["overrides"]["task"]], dirs)
    except Exception:  # noqa: BLE001  no record, or one Hydra's parser no longer reads: not known
        return None
    finally:
        GlobalHydra.instance().clear()
        if running is not None:
            GlobalHydra.instance().initialize(running)
        if job_name is not None:
            JobRuntime.instance().set("name", job_name)
