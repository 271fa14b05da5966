"""Interchange interventions / DAS: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Column, Method, register
from circuitlab.methods.das.config import DASConfig, input_files
from circuitlab.methods.das.figures import das_figures

METHOD = register(Method(
    "das", DASConfig, "circuitlab.methods.das.method", das_figures,
    columns=(Column("control", variant=True), Column("hypothesis", variant=True)), shardable=False, ranks_cumulative_heads=False, key_metric="iia", input_files=input_files,
    summary="interchange interventions: vanilla, DAS (a learned rotation), Boundless DAS; IIA per location"))
