"""EAP-IG: registered here; the schema in config.py, the run in method.py; the shared edge engine in
circuitlab/edges/, figures in circuitlab/edges/figures.py."""

from circuitlab.edges.figures import edge_figures
from circuitlab.methods.eap_ig.config import EAPIGConfig
from circuitlab.methods.registry import Column, Method, register

METHOD = register(Method(
    "eap_ig", EAPIGConfig, "circuitlab.methods.eap_ig.method", edge_figures, columns=(Column("sender"),), shardable=False, sweeps=False,
    summary="EAP-IG: edge scores from gradients integrated between the counterfactual and the clean input"))
