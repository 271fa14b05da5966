"""Ablations: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Column, Method, register
from circuitlab.methods.ablation.config import AblationConfig
from circuitlab.methods.ablation.figures import ablation_figures

METHOD = register(Method(
    "ablation", AblationConfig, "circuitlab.methods.ablation.method", ablation_figures,
    columns=(Column("scale", "float64"), Column("in_circuit", "boolean")), shardable=True, ranks_cumulative_heads=False,
    key_metric="effect", summary="ablations (zero, mean, resample, PCA) of nodes and circuits, at scales"))
