"""`circuitlab run|figures|report|merge|train-toy|list`: argparse subcommands, each with `--help`.

`run` hands its arguments to Hydra unchanged (overrides, `-m`, `--cfg job`, `--config-dir`, Hydra's own `--help`)
after the pre-flight checks (`compose.preflight`, `multirun.preflight_multirun`). User mistakes end in one line on
stderr and exit code 2, argparse's own included. Heavy imports (torch, TransformerLens) happen only in the commands
that need them, so `circuitlab figures` and `circuitlab report` run without torch. The config helpers live in
`compose.py`, below this module, `hydra_app.py` and `multirun.py`; their names stay importable from here.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from circuitlab.compose import (CONFIG_DIR, GROUPS, check_group_choices, compose_config, config_dirs, group_options,  # noqa: F401
                                is_hydra_override, launcher_options, one_line_error, preflight)
from circuitlab.errors import EXIT_USAGE, CircuitlabError, ConfigError

HYDRA_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--config-name", "-cn", "--version"}
LIST_CHOICES = ("streams", "models", "tasks", "methods", "launchers", "experiments", "all")
TRAIN_TOY_KEYS = ("task", "out", "steps")
_config_dir = config_dirs  # the name api.py and older scripts used


class Parser(argparse.ArgumentParser):
    """argparse with circuitlab's errors: one line, exit code 2 (argparse prints its usage and exits itself)."""

    def error(self, message: str):
        raise CircuitlabError(f"{self.prog.removeprefix('circuitlab ')}: {message}" if self.prog != "circuitlab" else message)


def fail(message: str) -> None:
    print(f"circuitlab: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def run_command(args: list[str]) -> None:
    """`circuitlab run ARGS`: pre-flight (the config composed and validated, the run dir checked; every job of a
    multirun), then Hydra with ARGS as given."""
    if "--plan" in args:  # the cost, nothing loaded or run (plan_command.py)
        from circuitlab.plan_command import plan_command

        return plan_command(args)
    args, dirs = config_dirs(args)
    flags = {a.split("=")[0] for a in args if a.startswith("-")}
    if not flags & HYDRA_INFO_FLAGS:
        from circuitlab.plan_command import auto_shards, overrides_of

        args = auto_shards(args, dirs)  # sweep.num_shards=auto: the shard count, chosen from the plan
        overrides = overrides_of(args)
        if flags & {"-m", "--multirun"}:
            from circuitlab.multirun import preflight_multirun

            preflight_multirun(overrides, dirs)
        else:
            preflight(overrides, dirs)
    sys.argv = ["circuitlab", *args]
    from circuitlab.hydra_app import hydra_main

    hydra_main()


def figures_command(args: argparse.Namespace) -> None:
    """Redraw every run under the dirs; a run that cannot be read (a damaged, empty or truncated file of its own:
    results.csv, manifest.json, a side table, examples.json) is skipped with one line on stderr and nothing of it is
    rewritten. Exit 0 when at least one run was drawn, else 2 (a single run: its one line)."""
    from circuitlab.figures import redraw
    from circuitlab.runfiles import run_dirs_under, shown

    roots = [Path(a) for a in args.dirs] or [Path("results")]
    for root in roots:
        if not root.exists():
            raise ConfigError("figures DIR", root, "an existing directory (default: results/)")
    runs = sorted({run for root in roots for run in run_dirs_under(root) if (run / "results.csv").exists() or (run / "manifest.json").exists()})
    if not runs:
        print(f"no runs (results.csv) under {', '.join(shown(r) for r in roots)}")
        return
    drawn, skipped = 0, []
    for run_dir in runs:
        try:
            with one_line_warnings():
                paths = redraw(run_dir)
                if (run_dir / "report.html").is_file():  # its inline figures are these: rewritten with them
                    from circuitlab.report import write_report

                    paths = [*paths, write_report(run_dir)]
        except CircuitlabError as err:
            skipped.append((run_dir, err))
            continue
        drawn += 1
        for path in paths:
            print(shown(path))
    if len(runs) == 1 and skipped:
        raise skipped[0][1]
    for run_dir, err in skipped:
        print(f"circuitlab: warning: skipped {shown(run_dir)}: {err}", file=sys.stderr)
    if not drawn:
        raise CircuitlabError(f"figures: none of the {len(skipped)} runs under {', '.join(shown(r) for r in roots)} could be read; nothing drawn")


def report_command(args: argparse.Namespace) -> None:
    """report.html for every finished run under the dirs, index.html for each dir of runs and each DIR; a run that
    cannot be read is skipped with one line on stderr (its row in the index says why), its report.html left as it
    was. Exit 2 when DIR holds no run, or its only run cannot be read (its one line)."""
    from circuitlab.report import run_dirs_under, write_reports
    from circuitlab.runfiles import shown

    roots = [Path(a) for a in args.dirs] or [Path("results")]
    for root in roots:
        if not root.is_dir():
            raise ConfigError("report DIR", root, "an existing directory: a run dir, a multirun dir or results/")
    if not any(run_dirs_under(root) for root in roots):
        raise CircuitlabError(f"report: no runs under {', '.join(shown(r) for r in roots)}")
    with one_line_warnings():
        written, skipped = write_reports(roots, args.title)
    if not written and len(skipped) == 1:
        raise CircuitlabError(skipped[0][1] if skipped[0][1].startswith(str(skipped[0][0])) else f"{shown(skipped[0][0])}: {skipped[0][1]}")
    for run_dir, why in skipped:
        print(f"circuitlab: warning: no report for {shown(run_dir)}: {why}", file=sys.stderr)
    for path in written:
        print(shown(path))


@contextlib.contextmanager
def one_line_warnings():
    """Python warnings raised inside (a run drawn without some figure, ...) as circuitlab's one-line warnings."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        print(f"circuitlab: warning: {str(warning.message).splitlines()[0] if str(warning.message) else warning.category.__name__}", file=sys.stderr)


def train_toy_settings(settings: list[str]) -> dict:
    """`task=NAME [out=DIR] [steps=N]` checked before any training: (toy name, out dir, steps or None)."""
    from circuitlab.models.toy import MAX_STEPS, TASK_TO_TOY, check_out_dir
    from circuitlab.rundir import check_location, probe_writable

    allowed = f"task={'|'.join(TASK_TO_TOY)} (required), out=DIR, steps=N"
    options: dict[str, str] = {}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep or key not in TRAIN_TOY_KEYS:
            raise CircuitlabError(f"train-toy: {setting!r} is not a setting; allowed: {allowed}")
        if key in options:
            raise CircuitlabError(f"train-toy: {key} is given twice ({key}={options[key]}, {key}={value}); give it once")
        options[key] = value
    task = options.get("task")
    if task is None:
        raise CircuitlabError(f"train-toy: task=NAME is required; allowed: {allowed}")
    if task not in TASK_TO_TOY:
        raise ConfigError("task", task, list(TASK_TO_TOY))
    steps = options.get("steps")
    if steps is not None and not (steps.isascii() and steps.isdigit() and 1 <= int(steps) <= MAX_STEPS):
        raise ConfigError("steps", steps, f"a positive integer up to {MAX_STEPS} (training steps; the recipe's own when left out)")
    name = TASK_TO_TOY[task]
    out = check_location("out", options.get("out", f"results/toy_models/{name}"))
    check_out_dir(out)
    probe_writable("out", out)
    return {"name": name, "out": out, "steps": int(steps) if steps else None}


def train_toy_command(args: argparse.Namespace) -> None:
    settings = train_toy_settings(args.settings)
    from circuitlab.models.toy import RECIPES, train_toy

    name, out = settings["name"], settings["out"]
    report = train_toy(name, out, steps=settings["steps"])
    accuracy = {k: v for k, v in report.items() if k.endswith("accuracy") and k != "train_accuracy"}
    print(f"{name}: {', '.join(f'{k} {v:.4f}' for k, v in accuracy.items())} after {report['recipe']['steps']} steps "
          f"({report['train_seconds']} s); written to {out}")
    shipped = Path(__file__).parent / "models" / "embedded" / name
    if out.resolve() != shipped.resolve():
        print(f"to ship it: cp {out}/* {shipped}/  (recipe: {RECIPES[name]})")


def merge_command(args: argparse.Namespace) -> None:
    import logging

    from circuitlab.merge import merge_shards

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    manifest = merge_shards([Path(d) for d in args.dirs], Path(args.out))
    chunks = manifest["chunks"]
    print(f"merged {len(args.dirs)} shards into {args.out}: {chunks['chunks_loaded']} chunks loaded, {chunks['chunks_computed']} computed")


def plan_command(args: list[str]) -> None:
    """`circuitlab plan ARGS`: `circuitlab run ARGS --plan` (plan_command.py)."""
    from circuitlab.plan_command import plan_command as print_plan

    print_plan(args)


def status_command(args: argparse.Namespace) -> None:
    from circuitlab.status import status_lines

    for directory in args.dirs:
        print("\n".join(status_lines(Path(directory))))


def list_command(args: argparse.Namespace) -> None:
    what = args.what
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
    if what in ("methods", "all"):
        from circuitlab.methods import registry

        print("methods (method=NAME; registered in circuitlab/methods/):")
        for method in registry.METHODS.values():
            print(f"  {method.name:<22} {method.summary}")
    if what in ("launchers", "all"):
        print("launchers (circuitlab run -m hydra/launcher=NAME ...): " + ", ".join(launcher_options()))
    if what in ("experiments", "all"):
        print("experiments (circuitlab run +experiment=NAME):")
        for name in group_options("experiment"):
            lines = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()
            about = next((ln.lstrip("# ") for ln in lines[1:] if ln.startswith("#")), "")
            print(f"  {name:<28} {about}")


RUN_HELP = """run an experiment; every argument goes to Hydra: overrides (e.g. +experiment=ioi_patching
task.n_prompts=32), -m for a multirun, --cfg job to print the config, --config-dir DIR for your own presets
(DIR/experiment/NAME.yaml), hydra.run.dir=DIR; `circuitlab run --help` lists the config groups and settings"""


def build_parser() -> tuple[Parser, dict[str, Parser]]:
    """The top-level parser and each subcommand's (`run` is listed there, its arguments go to Hydra unparsed)."""
    parser = Parser(prog="circuitlab", description="Mechanistic-interpretability experiments over TransformerLens, configured "
                    "with Hydra.", epilog="`circuitlab COMMAND --help` describes a command.")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND", parser_class=Parser)
    subs = {"run": commands.add_parser("run", help=RUN_HELP, add_help=False)}
    figures = subs["figures"] = commands.add_parser("figures", help="redraw the figures of every run under DIR from its CSVs (no model, no torch)",
                                                    description="Redraw the figures (and report.html where there is one) of every run under each DIR "
                                                    "from its CSVs; a run that cannot be read is skipped with one line.")
    figures.add_argument("dirs", nargs="*", metavar="DIR", help="run dirs or dirs of runs (default: results/)")
    report = subs["report"] = commands.add_parser("report", help="write report.html in every run under DIR and index.html pages (no model, no torch)",
                                                  description="Write report.html in every run under each DIR, index.html in each sweep dir and in "
                                                  "DIR, from the run dirs' files.")
    report.add_argument("dirs", nargs="*", metavar="DIR", help="a run dir, a multirun dir or results/ (default: results/)")
    report.add_argument("--title", metavar="TEXT", help="the title of DIR's index page")
    merge = subs["merge"] = commands.add_parser("merge", help="combine the shard dirs of one sweep (sweep.num_shards=N) into one run dir",
                                                description="Combine the shard dirs of one sharded sweep into one run dir, as one unsharded run writes it.")
    merge.add_argument("dirs", nargs="+", metavar="SHARD_DIR", help="the shards' run dirs")
    merge.add_argument("--out", required=True, metavar="OUT", help="the merged run dir (made here)")
    toy = subs["train-toy"] = commands.add_parser("train-toy", help="retrain an embedded toy model by its seeded recipe",
                                                  description="Retrain an embedded toy model by its seeded recipe: task=ioi (toy-ioi), "
                                                  "task=factual (toy-facts) or task=addition (toy-addition).")
    toy.add_argument("settings", nargs="*", metavar="KEY=VALUE", help="task=NAME (required); out=DIR (default: results/toy_models/"
                     "<toy>); steps=N (default: the recipe's)")
    listing = subs["list"] = commands.add_parser("list", help="list streams, models, tasks, methods, launchers, experiments",
                                                 description="List what a run can name: streams, models, tasks, methods, launchers, experiments.")
    listing.add_argument("what", nargs="?", default="all", choices=LIST_CHOICES, metavar="WHAT", help=f"one of {', '.join(LIST_CHOICES)} (default: all)")
    subs["plan"] = commands.add_parser("plan", help="what `circuitlab run ARGS` will cost (points, chunks, memory, time), nothing loaded",
                                       add_help=False)
    status = subs["status"] = commands.add_parser("status", help="each job of a sweep: pending, running (chunks done), done, failed (why)",
                                                  description="Where each job of a sweep (local, joblib or Slurm) or each run under DIR is, "
                                                  "from the run dirs alone: pending, running (chunks done of planned), done, failed (its "
                                                  "last error line).")
    status.add_argument("dirs", nargs="+", metavar="DIR", help="a multirun dir, a run dir or a dir of runs")
    export_mib = subs["export-mib"] = commands.add_parser("export-mib", help="write a finished edge run's scores and MIB's nine budget circuits under RUN_DIR/mib/",
                                                          description="A finished eap / eap_ig / edge_patching / ensemble run in MIB's "
                                                          "circuit-track submission layout (as method.export=[mib] writes it), under RUN_DIR/mib/.")
    export_mib.add_argument("run_dir", metavar="RUN_DIR", help="the edge run's dir")
    return parser, subs


def export_mib_command(args) -> None:
    from circuitlab.edges.mib import export_run

    written = export_run(Path(args.run_dir))
    print(f"wrote {len(written)} files under {Path(args.run_dir) / 'mib'}")


COMMANDS = {"run": run_command, "figures": figures_command, "report": report_command, "merge": merge_command,
            "train-toy": train_toy_command, "list": list_command, "plan": plan_command, "status": status_command,
            "export-mib": export_mib_command}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, subs = build_parser()
    if not argv or argv[0] in ("-h", "--help", "help"):
        parser.print_help()
        return
    if argv[0] not in COMMANDS:
        fail(f"unknown command {argv[0]!r}; allowed: {', '.join(COMMANDS)} (circuitlab --help describes them)")
    from circuitlab.rundir import sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            if argv[0] == "run":
                run_command(argv[1:])  # Hydra's arguments, unparsed
            elif argv[0] == "plan":
                plan_command(argv[1:])  # run's arguments, unparsed
            else:
                COMMANDS[argv[0]](subs[argv[0]].parse_intermixed_args(argv[1:]))
    except CircuitlabError as err:
        fail(str(err))
    except OSError as err:  # a path named in the arguments that the filesystem refuses to look up
        import errno

        if err.errno != errno.ENAMETOOLONG:
            raise
        from circuitlab.rundir import NAME_MAX, shortened

        fail(f"{shortened(str(err.filename))}: a name in this path is longer than the filesystem allows ({NAME_MAX} bytes); name a shorter one")
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM: one line saying what was kept, no traceback
        signum = int(getattr(err, "signum", 2))
        message = getattr(err, "message", None) or ("interrupted" if signum == 2 else "terminated") + " before any sweep point was kept"
        print(f"circuitlab: {message}", file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
