"""`circuitlab run|figures|train-toy|list`: dispatch on argv[1]; `run` hands the rest to Hydra.

User mistakes end in one line on stderr and exit code 2. Heavy imports (torch, TransformerLens) happen only
in the commands that need them, so `circuitlab figures` runs without torch.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from circuitlab.errors import EXIT_USAGE, CircuitlabError, ConfigError

CONFIG_DIR = Path(os.environ.get("CIRCUITLAB_CONFIGS", Path(__file__).resolve().parent / "configs"))  # ships in the wheel
GROUPS = ("model", "task", "method", "sweep", "experiment")
HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--config-name", "-cn", "--version"}
USAGE = """usage: circuitlab COMMAND [ARGS]

commands:
  run [OVERRIDES]        run an experiment, e.g. `circuitlab run +experiment=ioi_patching`
                         (any Hydra override; -m for multirun; --cfg job to print the config;
                         --config-dir DIR adds your own presets, e.g. DIR/experiment/NAME.yaml)
  figures [DIR ...]      redraw the figures of every run under DIR (default: results/) from its CSV
  report [DIR ...]       write report.html in every run under DIR (default: results/) and index.html in
                         each sweep dir and in DIR, from the run dirs' files (no model, no torch);
                         --title TEXT names DIR's index page
  train-toy task=ioi     retrain an embedded toy model by its recipe [out=DIR] [steps=N]
  merge DIR... --out OUT combine the shard dirs of one sweep (sweep.num_shards=N) into one run dir
  list [WHAT]            list streams, models, tasks, launchers, experiments (default: all)
"""


def fail(message: str) -> None:
    print(f"circuitlab: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def group_options(group: str, config_dirs: Sequence[Path] = ()) -> list[str]:
    """The options of a config group: the shipped ones and those in the user's `--config-dir`."""
    return sorted({p.stem for d in (CONFIG_DIR, *config_dirs) for p in (d / group).glob("*.yaml")})


LAUNCHER_PLUGINS = {"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
LAUNCHER_NEEDS = {"local_gpus": "joblib", "slurm": "submitit_slurm"}


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


def preflight(overrides: list[str], config_dirs: Sequence[Path] = ()):
    """Compose the config as Hydra will and validate it, before any run dir or model exists."""
    from circuitlab.plan import prepare_once

    check_group_choices(overrides, config_dirs)
    from circuitlab import resume

    cfg = compose_config([o for o in overrides if not o.lstrip("+~").startswith("hydra")], config_dirs)
    prepare_once(cfg)
    resume.preflight(cfg)  # results_dir / run.dir, the dir's lock, config and inputs; the model when the dir holds files
    return cfg


def compose_config(overrides: list[str], config_dirs: Sequence[Path] = ()):
    """The composed config (Hydra's compose API, same files and overrides as `circuitlab run`).

    `config_dirs` are searched after the shipped configs, as Hydra searches `--config-dir`."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from circuitlab.config import register_configs

    register_configs()
    search = ["hydra.searchpath=[" + ",".join(f"'file://{d}'" for d in config_dirs) + "]"] if config_dirs else []
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose("config", overrides=[*overrides, *search])
    except (HydraException, OmegaConfBaseException, ValueError) as err:
        raise CircuitlabError(one_line_error(err, overrides, config_dirs)) from None


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


def run_command(args: list[str]) -> None:
    args, config_dirs = _config_dir(args)
    flags = {a.split("=")[0] for a in args if a.startswith("-")}
    multirun = bool(flags & {"-m", "--multirun"})
    if not flags & HYDRA_INFO_FLAGS:
        overrides = _overrides(args)
        if multirun:
            from circuitlab.multirun import preflight_multirun

            preflight_multirun(overrides, config_dirs)
        else:
            if any(o.lstrip("+~").startswith("hydra") for o in overrides):  # Hydra's own errors in one line too
                from circuitlab.multirun import compose_hydra

                check_group_choices(overrides, config_dirs)
                compose_hydra(overrides, config_dirs)
            preflight(overrides, config_dirs)
    sys.argv = ["circuitlab", *args]
    from circuitlab.hydra_app import hydra_main

    hydra_main()


def _config_dir(args: list[str]) -> tuple[list[str], list[Path]]:
    """Hydra's `--config-dir DIR` / `-cd DIR` (the user's own config groups, searched after the shipped ones),
    checked and handed on to Hydra as one `--config-dir=ABSOLUTE_DIR`; Hydra uses the last one given."""
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


def _overrides(args: list[str]) -> list[str]:
    """The `key=value` arguments, skipping flags and the values of `--cfg/-c` and `--package/-p`."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in ("--cfg", "-c", "--package", "-p", "--experimental-rerun"):
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    return out


def figures_command(args: list[str]) -> None:
    """Redraw every run under the dirs; a run that cannot be read (a damaged, empty or truncated results.csv or
    manifest.json, or a manifest without its results.csv) is skipped with one line on stderr. Exit 0 when at least
    one run was drawn, else 2."""
    from circuitlab.figures import redraw
    from circuitlab.results import find_run_dirs

    roots = [Path(a) for a in args] or [Path("results")]
    for root in roots:
        if not root.exists():
            raise ConfigError("figures DIR", root, "an existing directory (default: results/)")
    runs = find_run_dirs(roots)
    runs = sorted({*runs, *(p.parent for root in roots for p in root.rglob("manifest.json"))})
    if not runs:
        print(f"no runs (results.csv) under {', '.join(map(str, roots))}")
        return
    drawn, skipped = 0, 0
    for run_dir in runs:
        try:
            paths = redraw(run_dir)
        except CircuitlabError as err:
            print(f"circuitlab: warning: skipped {run_dir}: {err}", file=sys.stderr)
            skipped += 1
            continue
        drawn += 1
        if (run_dir / "report.html").is_file():  # its inline figures are these: rewritten with them
            from circuitlab.report import write_report

            paths = [*paths, write_report(run_dir)]
        for path in paths:
            print(path)
    if not drawn:
        raise CircuitlabError(f"figures: none of the {skipped} runs under {', '.join(map(str, roots))} could be read; nothing drawn")


def report_command(args: list[str]) -> None:
    """report.html for every finished run under the dirs, index.html for each dir of runs and each DIR; a run that
    cannot be read is skipped with one line on stderr (its row in the index says why). Exit 2 when DIR holds no run."""
    from circuitlab.report import run_dirs_under, write_reports

    title = None
    if "--title" in args:
        at = args.index("--title")
        if at == len(args) - 1:
            raise ConfigError("report --title", "(nothing)", "a title for the index page, e.g. --title 'seed 000'")
        title, args = args[at + 1], args[:at] + args[at + 2:]
    roots = [Path(a) for a in args] or [Path("results")]
    for root in roots:
        if not root.is_dir():
            raise ConfigError("report DIR", root, "an existing directory: a run dir, a multirun dir or results/")
    if not any(run_dirs_under(root) for root in roots):
        raise CircuitlabError(f"report: no runs under {', '.join(map(str, roots))}")
    written, skipped = write_reports(roots, title)
    for run_dir, why in skipped:
        print(f"circuitlab: warning: no report for {run_dir}: {why}", file=sys.stderr)
    for path in written:
        print(path)


def train_toy_command(args: list[str]) -> None:
    options = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = set(options) - {"task", "out", "steps"}
    if unknown or len(options) != len(args):
        raise ConfigError("train-toy", " ".join(args), "task=NAME [out=DIR] [steps=N]")
    from circuitlab.models.toy import RECIPES, TASK_TO_TOY

    task = options.get("task")
    if task not in TASK_TO_TOY:
        raise ConfigError("task", task, TASK_TO_TOY)
    steps = options.get("steps")
    if steps is not None and not steps.isdigit():
        raise ConfigError("steps", steps, "a positive integer")
    name = TASK_TO_TOY[task]
    out = Path(options.get("out", f"results/toy_models/{name}"))
    from circuitlab.models.toy import train_toy

    report = train_toy(name, out, steps=int(steps) if steps else None)
    accuracy = {k: v for k, v in report.items() if k.endswith("accuracy") and k != "train_accuracy"}
    print(f"{name}: {', '.join(f'{k} {v:.4f}' for k, v in accuracy.items())} after {report['recipe']['steps']} steps "
          f"({report['train_seconds']} s); written to {out}")
    shipped = Path(__file__).parent / "models" / "embedded" / name
    if out.resolve() != shipped.resolve():
        print(f"to ship it: cp {out}/* {shipped}/  (recipe: {RECIPES[name]})")


def merge_command(args: list[str]) -> None:
    if "--out" not in args or args.index("--out") == len(args) - 1:
        raise ConfigError("merge", " ".join(args) or "(nothing)", "DIR... --out OUT")
    at = args.index("--out")
    out, dirs = args[at + 1], args[:at] + args[at + 2:]
    if not dirs:
        raise ConfigError("merge", " ".join(args), "DIR... --out OUT (one or more shard dirs)")
    import logging

    from circuitlab.merge import merge_shards

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    manifest = merge_shards([Path(d) for d in dirs], Path(out))
    chunks = manifest["chunks"]
    print(f"merged {len(dirs)} shards into {out}: {chunks['chunks_loaded']} chunks loaded, {chunks['chunks_computed']} computed")


def list_command(args: list[str]) -> None:
    what = args[0] if args else "all"
    choices = ("streams", "models", "tasks", "launchers", "experiments", "all")
    if what not in choices:
        raise ConfigError("list", what, choices)
    if what in ("streams", "all"):
        from circuitlab.locations import STREAMS

        print("streams (TransformerLens name, aliases, hook):")
        for stream in dict.fromkeys(STREAMS.values()):
            aliases = ", ".join(stream.aliases) or "-"
            print(f"  {stream.name:<12} {aliases:<20} {stream.hook:<34} {stream.description}")
    if what in ("models", "all"):
        from circuitlab.models.loading import embedded_models

        print("models: embedded " + ", ".join(embedded_models()) + "; any TransformerLens name via model=gpt2-small model.name=NAME; "
              "a local checkpoint via model=local model.path=DIR")
    if what in ("tasks", "all"):
        print("tasks: " + ", ".join(group_options("task")))
    if what in ("launchers", "all"):
        print("launchers (circuitlab run -m hydra/launcher=NAME ...): " + ", ".join(launcher_options()))
    if what in ("experiments", "all"):
        print("experiments (circuitlab run +experiment=NAME):")
        for name in group_options("experiment"):
            lines = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
            about = next((ln.lstrip("# ") for ln in lines[1:] if ln.startswith("#")), "")
            print(f"  {name:<28} {about}")


COMMANDS = {"run": run_command, "figures": figures_command, "report": report_command, "train-toy": train_toy_command, "merge": merge_command, "list": list_command}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command {argv[0]!r}; allowed: {', '.join(COMMANDS)}")
    from circuitlab.rundir import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            command(argv[1:])
    except CircuitlabError as err:
        fail(str(err))
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM: one line saying what was kept, no traceback
        signum = int(getattr(err, "signum", 2))
        message = getattr(err, "message", None) or ("interrupted" if signum == 2 else "terminated") + " before any sweep point was kept"
        print(f"circuitlab: {message}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
