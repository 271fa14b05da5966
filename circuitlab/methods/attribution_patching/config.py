"""Attribution patching: its config schema (extends MethodConfig; method/attribution_patching.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.config import MethodConfig


@dataclass
class AttributionPatchingConfig(MethodConfig):
    """Attribution patching (gradient approximation); `compare_exact` also runs exact activation patching on
    the same locations and writes the correlation of the two."""

    name: str = "attribution_patching"
    direction: str = "denoising"
    metrics: list[str] = field(default_factory=lambda: ["logit_diff"])
    compare_exact: bool = True
