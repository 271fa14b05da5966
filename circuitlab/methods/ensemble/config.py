"""Ensembles of edge-scoring methods: their config schema (method/ensemble.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EnsembleConfig(EdgeMethodConfig):
    """Every edge scored by each of `members` (eap, eap_ig, eap_ig_activations, edge_patching) on the same prompts
    and counterfactual, each member's scores divided by its largest |score|, then combined edge by edge:
    `combine` mean, or min / max (the smallest / largest magnitude, with the sign of the mean). `ig_steps`: the
    EAP-IG members' steps."""

    name: str = "ensemble"
    members: list[str] = field(default_factory=lambda: ["eap", "eap_ig"])
    combine: str = "mean"
    ig_steps: int = 5
