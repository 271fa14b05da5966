"""Logit lens and direct logit attribution: its config schema (extends MethodConfig; method/direct_attribution.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.config import MethodConfig


@dataclass
class DirectAttributionConfig(MethodConfig):
    """Logit lens and direct logit attribution (seed 001) of the logit difference at the final position.
    `analyses`: any of logit_lens, layers (per-layer decomposition), heads (per-head attribution); `prompts`:
    clean or corrupted; `incl_mid`: the logit lens also reads the stream between attention and MLP."""

    name: str = "direct_attribution"
    analyses: list[str] = field(default_factory=lambda: ["logit_lens", "layers", "heads"])
    prompts: str = "clean"
    incl_mid: bool = True
