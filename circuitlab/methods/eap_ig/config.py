"""EAP with integrated gradients: its config schema (method/eap_ig.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EAPIGConfig(EdgeMethodConfig):
    """EAP-IG (inputs): gradients averaged over `ig_steps` points between the counterfactual's input embeddings
    and the clean ones (MIB's recommended baseline; 1 step is EAP)."""

    name: str = "eap_ig"
    ig_steps: int = 5
