"""The method registry: one `Method` record per method, registered once by name (a second registration of a name is
refused). The record holds what needs no torch (the config schema, the figures, the CSV columns, capabilities); the
method's own checks, planning and run live in its `module` and are imported only when a run needs them, so that
`circuitlab figures` works without torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from circuitlab.errors import ConfigError


COLUMN_DTYPES = ("string", "float64", "boolean")


@dataclass(frozen=True)
class Column:
    """One of a method's own results.csv columns and how `results.read_results` reads it back: `string` (text; empty
    where the row has none), `float64` (numbers; NaN where empty) or `boolean` (True / False; <NA> where empty). A run
    of another method lacks the column: it is added, empty, with this dtype."""

    name: str
    dtype: str = "string"
    variant: bool = False  # a row with a value here is a variant of the result (a control, another hypothesis): no key number

    def __post_init__(self) -> None:
        if self.dtype not in COLUMN_DTYPES:
            raise ValueError(f"column {self.name}: dtype {self.dtype!r} is not one of {', '.join(COLUMN_DTYPES)}")


@dataclass(frozen=True)
class Method:
    """`module` defines `validate(cfg)` (checks without the tokenizer or weights), `plan(cfg, shape, pairs, tokenizer,
    locations) -> (locations, method_plan)` (checks against the model's shape and the prompts; `method_plan` is the
    method's own part of the Plan) and `run(cfg, plan, model) -> MethodOutput`; optionally `shard_points(cfg,
    locations, pairs) -> (count, what)`, the points its chunks hold, for the shard check, and `keeps_chunks(cfg)`,
    where the config decides whether finished chunks are kept (default: `shardable`), and `contrasts(cfg)`, whether
    it compares the clean prompts with the corrupted ones (default: True)."""

    name: str
    schema: type  # its config dataclass, stored in Hydra's ConfigStore as method/base_<name>
    module: str
    figures: Callable[..., list[Path]] | None = None  # (its rows of results.csv, figures dir) -> written files
    columns: tuple[Column, ...] = ()  # its own results.csv columns beyond the shared ones, with their dtypes
    shardable: bool = True
    ranks_cumulative_heads: bool = False  # sweep.heads=cumulative without head_order: ranks heads by their own effect
    sweeps: bool = True  # plans sweep points from the sweep group (False: it reads the whole model; plan.locations == [])
    key_metric: str | None = None  # the report's key number and main-table order (None: the first *_normalized metric, else the first)
    table_sort: tuple[tuple[str, str], ...] = ()  # (side-table file, column): the report lists that table by |column|, largest first
    summary: str = ""  # one line for `circuitlab list methods`
    input_files: Callable[..., dict[str, Path]] | None = None  # (its method config) -> label -> a file its run reads (inputs.py digests it)

    @property
    def hooks(self) -> ModuleType:
        return importlib.import_module(self.module)

    def keeps_chunks(self, cfg) -> bool:
        """Whether a run of `cfg` keeps its finished chunks on disk (so that an interrupted run resumes): the module's
        `keeps_chunks(cfg)` where the config decides, else `shardable` (sharding hands out chunks)."""
        decide = getattr(self.hooks, "keeps_chunks", None)
        return bool(decide(cfg)) if decide is not None else self.shardable

    def contrasts(self, cfg) -> bool:
        """Whether a run of `cfg` reads the clean prompts against the corrupted ones (patches one into the other, or
        normalises by their logit-difference gap), so that identical prompts leave it nothing to measure: the
        module's `contrasts(cfg)` where it decides (direct attribution reads one prompt; the edge methods' mean and
        zero counterfactuals need no corrupted prompt), else True."""
        decide = getattr(self.hooks, "contrasts", None)
        return bool(decide(cfg)) if decide is not None else True


METHODS: dict[str, Method] = {}


def variant_columns() -> list[str]:
    """The registered methods' columns whose rows are variants of a result (`Column.variant`)."""
    return list(dict.fromkeys(c.name for m in METHODS.values() for c in m.columns if c.variant))


def register(method: Method) -> Method:
    if method.name in METHODS:
        raise ValueError(f"a method named {method.name} is registered already")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method, or one line naming the registered ones."""
    if name not in METHODS:
        raise ConfigError("method.name", name, list(METHODS))
    return METHODS[name]
