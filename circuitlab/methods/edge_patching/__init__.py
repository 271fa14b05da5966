"""Exact edge patching: registered here; the schema in config.py, the run in method.py; the shared edge engine in
circuitlab/edges/, figures in circuitlab/edges/figures.py."""

from circuitlab.edges.figures import edge_figures
from circuitlab.methods.edge_patching.config import EdgePatchingConfig
from circuitlab.methods.registry import Column, Method, register

METHOD = register(Method(
    "edge_patching", EdgePatchingConfig, "circuitlab.methods.edge_patching.method", edge_figures,
    columns=(Column("sender"),), shardable=True, sweeps=False,
    summary="exact edge patching: the true effect of each edge patched alone, many edges per forward"))
