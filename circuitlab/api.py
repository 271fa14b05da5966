"""The notebook way in: `circuitlab.run(...)` composes the very configs and overrides of `circuitlab run`, runs in
this process (the model memoised across calls, as in a multirun) and returns a `Result`; `circuitlab.load(RUN_DIR)`
gives the same object for a finished run. Bad input raises `CircuitlabError` with the CLI's one line.

    import circuitlab
    r = circuitlab.run("ioi_patching", "task.n_prompts=32", model="toy-ioi")
    r.results            # the tidy DataFrame of results.csv
    r.figures["patching_heatmap"]   # a plotnine ggplot
    r                    # in Jupyter: the run's report
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

from circuitlab.errors import CircuitlabError

GROUP_KEYWORDS = ("model", "task", "method", "sweep")


class Result:
    """One finished run dir, read lazily: `results` (tidy DataFrame), `tables` (the side CSVs by file name),
    `tensors` (results.pt), `dataset` (dataset.pt), `manifest`, `config`, `figures` (stem -> plotnine ggplot, drawn
    from the CSVs), `report_path`; displayed in Jupyter as the report."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir).absolute()

    @cached_property
    def manifest(self) -> dict:
        from circuitlab.runfiles import read_manifest

        return read_manifest(self.run_dir)

    @property
    def config(self) -> dict:
        return self.manifest.get("config", {})

    @property
    def experiment(self) -> str:
        return self.manifest.get("experiment", self.run_dir.name)

    @property
    def method(self) -> str | None:
        return self.config.get("method", {}).get("name")

    @cached_property
    def results(self):
        from circuitlab.results import read_results

        return read_results(self.run_dir)

    @cached_property
    def tables(self) -> dict:
        from circuitlab.report import side_tables
        from circuitlab.runfiles import read_table, record_of

        return {p.name: read_table(p, record_of(self.manifest, p.name)) for p in side_tables(self.run_dir)}

    @cached_property
    def tensors(self) -> dict:
        return self._tensor_file("results.pt")

    @cached_property
    def dataset(self) -> dict:
        return self._tensor_file("dataset.pt")

    def _tensor_file(self, name: str) -> dict:
        from circuitlab.runfiles import read_tensors, record_of

        return read_tensors(self.run_dir / name, record_of(self.manifest, name))

    @cached_property
    def figures(self) -> dict:
        from circuitlab.figures import plots

        return plots(self.run_dir)

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def key_number(self) -> dict | None:
        from circuitlab.report import key_number

        return key_number(self.results, self.method, self.run_dir)

    def write_report(self) -> Path:
        from circuitlab.report import write_report

        return write_report(self.run_dir)

    def _repr_html_(self) -> str:
        """The report, or the one line that says which file keeps it from being shown."""
        from html import escape

        from circuitlab.report import fragment
        from circuitlab.runfiles import shown

        try:
            return fragment(self.run_dir)
        except CircuitlabError as err:
            return f"<p><b>circuitlab: the report of {escape(shown(self.run_dir))} cannot be shown</b>: {escape(shown(err))}</p>"

    def __repr__(self) -> str:
        from circuitlab.runfiles import shown

        try:
            rows = len(self.results)
            head = f"{self.experiment!r}, method={self.method!r}"
        except CircuitlabError as err:
            rows, head = "?", f"damaged: {shown(err)!r}"
        return f"Result({head}, rows={rows}, run_dir={shown(self.run_dir)!r})"


def load(run_dir: str | Path) -> Result:
    """The `Result` of a finished run dir, refused in one line (CircuitlabError, a ValueError) naming the file when
    its manifest.json, results.csv, a side table, examples.json or a JSON record is missing or damaged; its `.pt`
    files are checked when `tensors` / `dataset` read them."""
    from circuitlab.figures import check_readable

    if not isinstance(run_dir, (str, os.PathLike)):
        raise CircuitlabError(f"circuitlab.load: run_dir {run_dir!r} is not a path (a run dir, e.g. 'results/ioi_patching/2026-01-01_12-00-00')")
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise CircuitlabError(f"{run_dir}: not a directory (a run dir holds results.csv and manifest.json)")
    if not (run_dir / "manifest.json").is_file() and (run_dir / "run_config.json").is_file():
        raise CircuitlabError(f"{run_dir / 'manifest.json'}: missing (the run did not finish)")
    check_readable(run_dir, need_manifest=True)
    return Result(run_dir)


def hydra_value(value) -> str:
    """A Python value as a Hydra override's value: lists and dicts in Hydra's syntax, None as null."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def overrides_from(experiment: str | None, overrides: Sequence[str], groups: dict, settings: dict) -> list[str]:
    """The command line's overrides for `run(experiment, *overrides, model=..., seed=...)`: the experiment becomes
    `+experiment=NAME` (a string holding `=` is an override itself), group keywords choose the group's option, other
    keywords set a top-level key."""
    out = []
    if experiment is not None and not isinstance(experiment, str):
        raise CircuitlabError(f"circuitlab.run: experiment {experiment!r} is not a preset name (a string such as 'ioi_patching'; "
                              "`circuitlab list experiments` lists them)")
    if experiment is not None:
        out.append(experiment if "=" in experiment else f"+experiment={experiment}")
    for override in overrides:
        if not isinstance(override, str):
            raise CircuitlabError(f"circuitlab.run: override {override!r} is not a string (write it as on the command line, e.g. 'task.n_prompts=32')")
        out.append(override)
    out += [f"{group}={value}" for group, value in groups.items() if value is not None]
    out += [f"{key}={hydra_value(value)}" for key, value in settings.items()]
    return out


def run(experiment: str | None = None, *overrides: str, model: str | None = None, task: str | None = None,
        method: str | None = None, sweep: str | None = None, config_dir: str | Path | None = None, **settings) -> Result:
    """Run one experiment in this process, composed exactly as `circuitlab run OVERRIDES` composes it, and return its
    `Result`. `experiment` is a preset name (`"ioi_patching"` -> `+experiment=ioi_patching`); `overrides` are the
    command line's strings; `model=`, `task=`, `method=`, `sweep=` choose a config group's option; other keywords set
    top-level keys (`seed=1`, `figures=False`); `config_dir` is the CLI's `--config-dir`."""
    from circuitlab import compose

    arguments = overrides_from(experiment, overrides, {"model": model, "task": task, "method": method, "sweep": sweep}, settings)
    hydra = [o for o in arguments if o.lstrip("+~").startswith("hydra")]
    if hydra:
        raise CircuitlabError(f"{hydra[0]}: hydra.* settings apply to `circuitlab run` on the command line only (a sweep: circuitlab run -m ...)")
    config_dirs = []
    if config_dir is not None:
        _, config_dirs = compose.config_dirs(["--config-dir", str(config_dir)])
    cfg = compose.preflight(arguments, config_dirs)  # the CLI's checks: group names, composition, the plan, the run dir
    return _run_composed(cfg, arguments)


def _run_composed(cfg, arguments: list[str]) -> Result:
    import logging

    from omegaconf import open_dict

    from circuitlab.run import run_experiment

    run_dir = Path(str(cfg.run.dir))  # `${now:...}` resolved once, as Hydra resolves it for the CLI
    with open_dict(cfg):
        cfg.run.dir = str(run_dir)
    logger = logging.getLogger("circuitlab")
    if not logger.handlers and not logging.getLogger().handlers:  # a notebook: the run's log lines as the CLI shows them
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    run_experiment(cfg, run_dir, overrides=arguments)
    return Result(run_dir)
