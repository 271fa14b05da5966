"""Edge attribution patching: its config schema (method/eap.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EAPConfig(EdgeMethodConfig):
    """EAP: every edge scored by gradient x activation difference from one backward per batch of prompts."""

    name: str = "eap"
