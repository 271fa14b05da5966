"""EAP with integrated gradients: its config schema (method/eap_ig.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EAPIGConfig(EdgeMethodConfig):
    """EAP-IG: gradients averaged over `ig_steps` points on a line from the counterfactual to the clean run.
    `ig_over`: inputs (the input embeddings: MIB's recommended baseline), activations (each component's output in
    turn, scoring the edges out of that component; 1 step is EAP) or activations-mib (the same runs, every run
    scoring every edge, as MIB's reference code computes it). `level`: edge, or node / neuron to also write each
    sender's (and each of its output dimensions') score to nodes.csv and results.pt (and MIB's node- or neuron-level
    faithfulness curve, node_ / neuron_faithfulness.csv)."""

    name: str = "eap_ig"
    ig_steps: int = 5
    ig_over: str = "inputs"
    level: str = "edge"
