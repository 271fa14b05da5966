"""Attribution patching: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Method, register
from circuitlab.methods.attribution_patching.config import AttributionPatchingConfig
from circuitlab.methods.attribution_patching.figures import attribution_patching_figures

METHOD = register(Method(
    "attribution_patching", AttributionPatchingConfig, "circuitlab.methods.attribution_patching.method", attribution_patching_figures,
    columns=(), shardable=True, ranks_cumulative_heads=True, key_metric="attribution_normalized",
    summary="attribution patching: the gradient estimate of activation patching, every point from one backward"))
