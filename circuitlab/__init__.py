"""circuitlab: a command-line experiment runner for mechanistic interpretability.

In a notebook: `circuitlab.run("ioi_patching", "task.n_prompts=32")` runs a preset as `circuitlab run` would and
returns a `Result` (shown as the run's report); `circuitlab.load(RUN_DIR)` reads a finished run. Nothing heavy is
imported until one of them is called.
"""

import sys
import types

from circuitlab.errors import CircuitlabError

__version__ = "0.1.0"
__all__ = ["CircuitlabError", "Result", "load", "run", "__version__"]


def run(experiment=None, *overrides, **options):
    """Run one experiment in this process, composed as `circuitlab run` composes it; returns its `Result`.
    See `circuitlab.api.run`."""
    from circuitlab import api

    return api.run(experiment, *overrides, **options)


def load(run_dir):
    """The `Result` of a finished run dir. See `circuitlab.api.load`."""
    from circuitlab import api

    return api.load(run_dir)


def __getattr__(name: str):
    if name == "Result":
        from circuitlab.api import Result

        return Result
    raise AttributeError(f"module 'circuitlab' has no attribute {name!r}")


class _Package(types.ModuleType):
    """The package's `run` stays the notebook function when the submodule `circuitlab.run` (run_experiment) is
    imported; that module is reached as `from circuitlab.run import ...` (sys.modules) as before."""

    def __setattr__(self, name, value):
        if name == "run" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
