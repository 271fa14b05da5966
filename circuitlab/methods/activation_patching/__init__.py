"""Activation patching: registered here; the schema in config.py, checks / planning / run in method.py, figures in figures.py."""

from circuitlab.methods.registry import Method, register
from circuitlab.methods.activation_patching.config import ActivationPatchingConfig
from circuitlab.methods.activation_patching.figures import activation_patching_figures

METHOD = register(Method(
    "activation_patching", ActivationPatchingConfig, "circuitlab.methods.activation_patching.method", activation_patching_figures,
    columns=(), shardable=True, ranks_cumulative_heads=True, key_metric="logit_diff_normalized",
    summary="activation patching (denoising or noising) of each sweep point, batched"))
