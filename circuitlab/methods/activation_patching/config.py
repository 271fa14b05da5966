"""Activation patching: its config schema (extends MethodConfig; method/activation_patching.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.config import MethodConfig


@dataclass
class ActivationPatchingConfig(MethodConfig):
    """`direction`: denoising (run corrupted, patch clean) or noising (run clean, patch corrupted)."""

    name: str = "activation_patching"
    direction: str = "denoising"
    metrics: list[str] = field(default_factory=lambda: ["logit_diff"])
