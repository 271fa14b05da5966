"""Exact edge patching: its config schema (method/edge_patching.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from circuitlab.edges.config import EdgeMethodConfig


@dataclass
class EdgePatchingConfig(EdgeMethodConfig):
    """The true effect of each edge patched alone. `edges`: all, or a list of edge names; `sample`: a seeded
    random sample of that many of them (the others' scores are NaN, and no circuit is cut)."""

    name: str = "edge_patching"
    edges: Any = "all"
    sample: Optional[int] = None
