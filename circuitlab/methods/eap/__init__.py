"""Edge attribution patching (EAP): registered here; the schema in config.py, the run in method.py; the shared
edge engine in circuitlab/edges/, figures in circuitlab/edges/figures.py."""

from circuitlab.edges.figures import edge_figures
from circuitlab.methods.eap.config import EAPConfig
from circuitlab.methods.registry import Column, Method, register

METHOD = register(Method(
    "eap", EAPConfig, "circuitlab.methods.eap.method", edge_figures, columns=(Column("sender"),), shardable=False, sweeps=False,
    summary="edge attribution patching (EAP): every edge scored from one backward"))
