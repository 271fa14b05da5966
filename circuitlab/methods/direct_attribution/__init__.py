"""Logit lens and direct logit attribution: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Method, register
from circuitlab.methods.direct_attribution.config import DirectAttributionConfig
from circuitlab.methods.direct_attribution.figures import direct_attribution_figures

METHOD = register(Method(
    "direct_attribution", DirectAttributionConfig, "circuitlab.methods.direct_attribution.method", direct_attribution_figures,
    columns=(), shardable=False, ranks_cumulative_heads=False, key_metric="dla", sweeps=False,
    summary="logit lens and direct logit attribution of layers and heads"))
