"""Ensembles of edge scores: registered here; the schema in config.py, the run in method.py; the combination in
circuitlab/edges/selection.py, the shared edge engine in circuitlab/edges/."""

from circuitlab.edges.figures import edge_figures
from circuitlab.methods.ensemble.config import EnsembleConfig
from circuitlab.methods.registry import Column, Method, register

METHOD = register(Method(
    "ensemble", EnsembleConfig, "circuitlab.methods.ensemble.method", edge_figures, columns=(Column("sender"),), shardable=False,
    sweeps=False, summary="edge scores of several methods (EAP, EAP-IG, exact), each divided by its largest |score|, then combined"))
