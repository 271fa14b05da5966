"""Path patching: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Column, Method, register
from circuitlab.methods.path_patching.config import PathPatchingConfig
from circuitlab.methods.path_patching.figures import path_patching_figures

METHOD = register(Method(
    "path_patching", PathPatchingConfig, "circuitlab.methods.path_patching.method", path_patching_figures,
    columns=(Column("receiver"),), shardable=True, ranks_cumulative_heads=False, key_metric="logit_diff_variation",
    table_sort=(("important_heads.csv", "logit_diff_variation"),),
    summary="path patching: each sender's effect through chosen receivers only (the IOI paper's algorithm)"))
