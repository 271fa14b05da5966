"""Path patching: its config schema (extends MethodConfig; method/path_patching.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from circuitlab.config import MethodConfig


@dataclass
class PathPatchingConfig(MethodConfig):
    """Path patching (the IOI paper's algorithm; seed 003). Senders are the sweep's locations (streams z,
    attn_out, mlp_out at positions [all]) in layers [begin_layer, the last receiver's block); the base run is
    the corrupted (contrast) prompt, the source the clean (normal) one. `receivers`: resid_pre.L,
    resid_post.L (resid_post.-1 is the final residual stream), q.L.H, k.L.H, v.L.H. `receiver_positions`:
    all, a named position (END) or a list of indices. `thresholds`: heads whose |variation| exceeds them are
    listed (log and important_heads.csv). `pattern_heads`: auto (the heads above the first threshold, at most
    8), [] or [[layer, head], ...]: their attention patterns, averaged over the `pattern_prompts`."""

    name: str = "path_patching"
    receivers: list[str] = field(default_factory=lambda: ["resid_post.-1"])
    receiver_positions: Any = "all"
    begin_layer: int = 0
    metrics: list[str] = field(default_factory=lambda: ["logit_diff"])
    thresholds: list[float] = field(default_factory=lambda: [0.05, 0.02])
    pattern_heads: Any = "auto"
    pattern_prompts: str = "corrupted"
