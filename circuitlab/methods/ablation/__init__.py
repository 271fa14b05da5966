"""Ablations: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Method, register
from circuitlab.methods.ablation.config import AblationConfig
from circuitlab.methods.ablation.figures import ablation_figures

METHOD = register(Method("ablation", AblationConfig, "circuitlab.methods.ablation.method", ablation_figures, ('scale', 'in_circuit'), shardable=True, ranks_cumulative_heads=False, key_metric="effect"))
