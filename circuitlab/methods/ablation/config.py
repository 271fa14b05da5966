"""Ablations: its config schema (extends MethodConfig; method/ablation.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from circuitlab.config import MethodConfig


@dataclass
class AblationConfig(MethodConfig):
    """Ablations (seed 004): each location of the clean run replaced by `scale` x its resampled (from the
    corrupted prompt), mean (over the clean prompts) or zero value, for every scale in `scales`; or the PCA
    modes pca_<self|resample>_<top|orthogonal> with `k` components per node and position. `circuit`: nodes
    (head.L.H, mlp.L, attn.L) that mark locations in / out and give the faithfulness of ablating all others.
    `resample_from`: corrupted (each pair's corrupted prompt) or dataset (another prompt of the task, clean or
    corrupted, drawn with the run's seed)."""

    name: str = "ablation"
    mode: str = "resample"
    resample_from: str = "corrupted"
    scales: list[Any] = field(default_factory=lambda: [0.0, 0.5, 1.0, 2.0])
    k: int = 2
    circuit: Optional[list[str]] = None
    metrics: list[str] = field(default_factory=lambda: ["logit_diff"])
