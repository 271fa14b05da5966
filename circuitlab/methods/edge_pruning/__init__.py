"""Edge pruning: registered here; the schema in config.py, the run in method.py, the masks in masks.py, their
differentiable masked forward in forward.py and the training in train.py; the shared edge engine (circuit,
faithfulness curve, outputs) in circuitlab/edges/, figures in circuitlab/edges/figures.py."""

from circuitlab.edges.figures import edge_figures
from circuitlab.methods.edge_pruning.config import EdgePruningConfig
from circuitlab.methods.registry import Column, Method, register

METHOD = register(Method(
    "edge_pruning", EdgePruningConfig, "circuitlab.methods.edge_pruning.method", edge_figures, columns=(Column("sender"),),
    shardable=False, sweeps=False,
    summary="edge pruning: a mask on every edge learned to keep the model's output with a sparsity penalty (resumable by epochs)"))
