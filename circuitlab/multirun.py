"""`circuitlab run -m`: every job of a sweep expanded as Hydra's basic sweeper expands it, and composed and planned
(nothing loaded, no dir made) before Hydra makes the sweep dir or runs job 0."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from circuitlab.cli import CONFIG_DIR, check_group_choices, compose_config, one_line_error
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

    from circuitlab.config import register_configs

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
    from circuitlab.plan import prepare_once

    jobs = sweep_jobs(overrides, config_dirs)
    hydra_sets = []
    for number, job in enumerate(jobs):
        check_group_choices(job, config_dirs)
        own = [o for o in job if not o.lstrip("+~").startswith("hydra")]
        hydra = [o for o in job if o.lstrip("+~").startswith("hydra")]
        try:
            prepare_once(compose_config(own, config_dirs))
            if hydra not in hydra_sets:
                hydra_sets.append(hydra)
                compose_hydra(job, config_dirs)
        except CircuitlabError as err:
            label = " ".join(o for o in own if o in _varying(jobs)) or "its overrides"
            raise CircuitlabError(f"multirun job {number} of {len(jobs)} ({label}): {err}") from None
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

def compose_hydra(overrides: list[str], config_dirs: Sequence[Path] = ()) -> None:
    """Compose the job's config with Hydra's own node (launcher, sweep dir), to catch Hydra's errors in one line."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from circuitlab.config import register_configs

    register_configs()
    search = ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in config_dirs) + "]"] if config_dirs else []
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            compose("config", overrides=[*overrides, *search], return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise CircuitlabError(one_line_error(err, overrides, config_dirs)) from None
