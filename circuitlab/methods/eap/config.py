"""Edge attribution patching: its config schema (method/eap.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EAPConfig(EdgeMethodConfig):
    """EAP: every edge scored by gradient x activation difference from one backward per batch of prompts.
    `gradient_at`: clean (the clean run's gradients: EAP) or clean-corrupted (MIB's baseline: the mean of the clean
    and the corrupted run's, patching counterfactual only). `level`: edge, or node / neuron to also write each
    sender's (and each of its output dimensions') score to nodes.csv and results.pt (and MIB's node- or neuron-level
    faithfulness curve, node_ / neuron_faithfulness.csv)."""

    name: str = "eap"
    gradient_at: str = "clean"
    level: str = "edge"
