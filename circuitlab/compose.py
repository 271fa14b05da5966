"""The config as `circuitlab run` composes it, and why not in one line: shared by the CLI (`cli.py`), Hydra's entry
point (`hydra_app.py`), the multirun pre-flight (`multirun.py`) and the notebook API (`api.py`), which all import it
and none of which it imports.

- `CONFIG_DIR`: the shipped configs (`CIRCUITLAB_CONFIGS` overrides); `group_options` lists a group's presets.
- `check_group_choices`: an unknown `model=` / `task=` / `+experiment=` / `hydra/launcher=` name in one line.
- `register_configs`: every schema (config.py's and each registered method's) in Hydra's ConfigStore.
- `compose_config` / `compose_hydra`: Hydra's compose API over the same files; errors become `one_line_error`.
- `config_dirs`: the user's `--config-dir` / `-cd`, checked and handed on to Hydra.
- `preflight`: one run composed and validated, and its run dir checked, before Hydra writes anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from circuitlab.errors import CircuitlabError, ConfigError

CONFIG_DIR = Path(os.environ.get("CIRCUITLAB_CONFIGS", Path(__file__).resolve().parent / "configs"))  # ships in the wheel
GROUPS = ("model", "task", "method", "sweep", "experiment")
LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
LAUNCHER_NEEDS = {"local_gpus": "joblib", "slurm": "submitit_slurm"}


def is_hydra_override(override: str) -> bool:
    """`hydra.run.dir=...`, `hydra/launcher=...`: Hydra's own settings, not the run's config."""
    return override.lstrip("+~").startswith("hydra")


def group_options(group: str, config_dirs: Sequence[Path] = ()) -> list[str]:
    """The options of a config group: the shipped ones and those in the user's `--config-dir`."""
    return sorted({p.stem for d in (CONFIG_DIR, *config_dirs) for p in (d / group).glob("*.yaml")})


def launcher_options() -> list[str]:
    return sorted({"basic", *LAUNCHER_PLUGINS, *(p.stem for p in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))})


def check_launcher(value: str) -> None:
    """A known launcher whose Hydra plugin is installed."""
    import importlib.util

    if value not in launcher_options():
        raise ConfigError("hydra/launcher", value, launcher_options())
    plugin = LAUNCHER_PLUGINS.get(LAUNCHER_NEEDS.get(value, value))
    if plugin and importlib.util.find_spec(plugin) is None:
        raise ConfigError("hydra/launcher", value, "basic (the Hydra plugin it needs is not installed: pip install 'circuitlab[cluster]')")
    if LAUNCHER_NEEDS.get(value, value) == "submitit_slurm" and shutil.which("sbatch") is None:
        others = [o for o in launcher_options() if LAUNCHER_NEEDS.get(o, o) != "submitit_slurm"]
        raise ConfigError("hydra/launcher", value, others, hint="there is no Slurm here: sbatch is not on PATH")


def check_group_choices(overrides: list[str], config_dirs: Sequence[Path] = ()) -> None:
    """Unknown names in `model=`, `task=`, `+experiment=`, `hydra/launcher=` ... become one line naming the options."""
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if key == "hydra/launcher" and sep:
            check_launcher(value)
        if sep and key in GROUPS and value and not any(c in value for c in ",()[]{}$"):
            if value not in group_options(key, config_dirs):
                raise ConfigError(key, value, group_options(key, config_dirs))
            for directory in config_dirs:
                check_preset_file(Path(directory) / key / f"{value}.yaml")


def check_preset_file(path: Path) -> None:
    """A preset of the user's `--config-dir` is UTF-8 YAML holding keys and values: else one line naming the file
    and where it breaks, before Hydra reads it (a shipped preset is checked by the tests)."""
    import yaml

    if not path.is_file():
        return
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise CircuitlabError(f"{path}: cannot be read ({err.strerror})") from None
    except UnicodeDecodeError as err:
        raise CircuitlabError(f"{path}: not UTF-8 text (byte {err.start}); a preset is a YAML file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise CircuitlabError(f"{path}: not valid YAML ({where}{getattr(err, 'problem', None) or err})") from None
    if data is not None and not isinstance(data, dict):
        raise CircuitlabError(f"{path}: a preset holds keys and values (a YAML mapping), not a {type(data).__name__}")


def searchpath_override(config_dirs: Sequence[Path]) -> list[str]:
    """The override that makes Hydra search the user's config dirs after the shipped ones."""
    return ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in config_dirs) + "]"] if config_dirs else []


def register_configs() -> None:
    """Store each schema under the name its YAML files extend (`base_<group>...`: config.py's generic ones and each
    registered method's), and register the resolver the local_gpus launcher sizes itself with."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from circuitlab.config import (AdditionTaskConfig, FactualTaskConfig, IOICounterfactualTaskConfig, IOITaskConfig, ModelConfig,
                                   PairsTaskConfig, RepeatFirstTaskConfig, RunConfig, SweepConfig)
    from circuitlab.devices import gpu_count
    from circuitlab.methods import registry

    if not OmegaConf.has_resolver("circuitlab_gpu_count"):
        OmegaConf.register_new_resolver("circuitlab_gpu_count", gpu_count)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RunConfig)
    for method in registry.METHODS.values():
        cs.store(group="method", name=f"base_{method.name}", node=method.schema)
    cs.store(group="model", name="base_model", node=ModelConfig)
    cs.store(group="task", name="base_ioi", node=IOITaskConfig)
    cs.store(group="task", name="base_pairs", node=PairsTaskConfig)
    cs.store(group="task", name="base_factual", node=FactualTaskConfig)
    cs.store(group="task", name="base_addition", node=AdditionTaskConfig)
    cs.store(group="task", name="base_ioi_counterfactual", node=IOICounterfactualTaskConfig)
    cs.store(group="task", name="base_repeat_first", node=RepeatFirstTaskConfig)
    cs.store(group="sweep", name="base_sweep", node=SweepConfig)


def compose_config(overrides: list[str], config_dirs: Sequence[Path] = (), hydra: bool = False):
    """The composed config (Hydra's compose API, same files and overrides as `circuitlab run`); with `hydra`, Hydra's
    own node too (launcher, run and sweep dirs). `config_dirs` are searched after the shipped configs, as Hydra
    searches `--config-dir`."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[*overrides, *searchpath_override(config_dirs)], return_hydra_config=hydra)
    except (HydraException, OmegaConfBaseException, ValueError, yaml.YAMLError) as err:  # YAML: a preset another one names
        raise CircuitlabError(one_line_error(err, overrides, config_dirs)) from None
    if hydra:
        check_launcher_settings(cfg)
    return cfg


def check_launcher_settings(cfg) -> None:
    """`hydra.launcher.n_jobs` (joblib, local_gpus): jobs at a time, a positive integer or -1 (one per CPU core, as
    joblib reads it; other negative values depend on the machine's core count, and 0 fails inside joblib)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        n_jobs = OmegaConf.select(cfg, "hydra.launcher.n_jobs", default=None)
    except OmegaConfBaseException:  # a resolver only Hydra's run has: the launcher checks it
        return
    if n_jobs is not None and (isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1):
        raise ConfigError("hydra.launcher.n_jobs", n_jobs, "a positive integer (jobs run at a time), or -1 (one per CPU core)")


def compose_hydra(overrides: list[str], config_dirs: Sequence[Path] = ()):
    """The job's config with Hydra's own node, composed to catch Hydra's errors in one line."""
    return compose_config(overrides, config_dirs, hydra=True)


def one_line_error(err: Exception, overrides: list[str], config_dirs: Sequence[Path] = ()) -> str:
    """Hydra / OmegaConf's multi-line composition error as one line, with the allowed keys for a typo."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    cause = err.__cause__
    while cause is not None:
        lines += [ln.strip() for ln in str(cause).splitlines() if ln.strip()]
        cause = cause.__cause__
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    skip = ("full_key", "object_type", "reference_type", "To append", "Set the environment")
    messages = list(dict.fromkeys(ln for ln in lines if not ln.startswith(skip)))
    message = "; ".join(messages[:2]) or str(err)
    if "LexerNoViableAltException" in message and any(ch in o for o in overrides for ch in "<>"):
        message += ("; quote values with < or >, such as edge names: 'method.edges=[\"a0.h1->m1\",\"m0->a1.h0<v>\"]'")
    if key and "not in" in message and "." in key:
        parent = key.rsplit(".", 1)[0]
        without = [o for o in overrides if not o.lstrip("+~").startswith(key)]
        if without != overrides and not key.startswith("hydra."):  # the typo is the user's: list the keys the config has
            node = compose_config(without, config_dirs)
            for part in parent.split("."):
                node = node[part]
            message += f"; allowed keys: {', '.join(node.keys())}"
    return f"{key}: {message}" if key else message


def config_dirs(args: list[str]) -> tuple[list[str], list[Path]]:
    """Hydra's `--config-dir DIR` / `-cd DIR` (the user's own config groups, searched after the shipped ones),
    checked and handed on to Hydra as one `--config-dir=ABSOLUTE_DIR`; Hydra uses the last one given. Returns the
    arguments with that flag rewritten, and the dirs."""
    out, dirs, rest = [], [], list(args)
    while rest:
        arg = rest.pop(0)
        flag, eq, value = arg.partition("=")
        if flag not in ("--config-dir", "-cd"):
            out.append(arg)
            continue
        if not eq:
            if not rest:
                raise ConfigError(flag, "(nothing)", "a directory of your own presets, e.g. --config-dir ~/my_presets")
            value = rest.pop(0)
        directory = Path(value).expanduser().resolve()
        if not directory.is_dir():
            raise ConfigError(flag, value, "an existing directory of config groups (e.g. DIR/experiment/NAME.yaml)")
        if "'" in str(directory):
            raise ConfigError(flag, value, "a path without quote characters")
        out.append(f"--config-dir={directory}")
        dirs = [directory]
    return out, dirs


def hydra_run_dir(overrides: list[str], config_dirs: Sequence[Path] = ()) -> Path | None:
    """Where Hydra will write a single run given `hydra.*` overrides (`hydra.run.dir=`, which may differ from
    `run.dir`); None without them (then it is `run.dir`) or when it cannot be resolved before Hydra runs."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not any(is_hydra_override(o) for o in overrides):
        return None
    cfg = compose_hydra(overrides, config_dirs)
    try:
        value = OmegaConf.select(cfg, "hydra.run.dir", throw_on_resolution_failure=True)
    except OmegaConfBaseException:  # a `${hydra:...}` resolver needs Hydra running: the run checks the dir itself
        return None
    return Path(str(value)) if value is not None else None


def preflight(overrides: list[str], config_dirs: Sequence[Path] = ()):
    """Compose the config as Hydra will and validate it, before any run dir or model exists; check the dir the run
    will write (`hydra.run.dir=` where given, else `run.dir`): a rerun it refuses changes nothing there."""
    from circuitlab import resume, threads
    from circuitlab.plan import prepare_once

    check_group_choices(overrides, config_dirs)
    run_dir = hydra_run_dir(overrides, config_dirs)  # Hydra's own errors in one line too
    cfg = compose_config([o for o in overrides if not is_hydra_override(o)], config_dirs)
    threads.apply(cfg.get("threads"))
    prepare_once(cfg)
    resume.preflight(cfg, run_dir)  # results_dir / the run dir, its lock, config and inputs; the model when the dir holds files
    return cfg
