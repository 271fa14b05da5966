"""Circuit declarations: a list of nodes (`head.L.H`, `mlp.L`, `attn.L`) that marks sweep locations in or out.

A location belongs to a node by what it patches: a per-head stream (z, result, q, k, v) of one head is
`head.L.H`; the MLP streams (mlp_in, mlp_post, mlp_out) are `mlp.L`; attn_out is `attn.L`. A location over a
group of heads is in the circuit when every head of the group is. Residual-stream locations belong to no node.
"""

from __future__ import annotations

import re

from circuitlab.errors import ConfigError
from circuitlab.locations import STREAMS, Location

NODE_SYNTAX = "head.L.H, mlp.L or attn.L"
_NODE = re.compile(r"^(head)\.(\d+)\.(\d+)$|^(mlp|attn)\.(\d+)$")
MLP_STREAMS = ("mlp_in", "mlp_post", "mlp_out")


def parse_circuit(nodes: list[str] | None, n_layers: int, n_heads: int) -> frozenset[str] | None:
    """The declared nodes, checked against the model's shape; None when no circuit is declared."""
    if nodes is None:
        return None
    allowed = f"{NODE_SYNTAX} with layer L in 0..{n_layers - 1} and head H in 0..{n_heads - 1}"
    out = set()
    for node in nodes:
        match = _NODE.match(str(node).strip())
        if not match:
            raise ConfigError("method.circuit", node, allowed)
        layer = int(match.group(2) or match.group(5))
        head = int(match.group(3)) if match.group(1) else None
        if layer >= n_layers or (head is not None and head >= n_heads):
            raise ConfigError("method.circuit", node, allowed, hint="no such node in this model")
        out.add(str(node).strip())
    return frozenset(out)


def location_nodes(location: Location, n_heads: int) -> list[str]:
    """The nodes a location patches ([] for the residual streams)."""
    stream = STREAMS[location.stream]
    if stream.has_heads and stream.name != "pattern":
        heads = range(n_heads) if location.heads is None else location.heads
        return [f"head.{location.layer}.{h}" for h in heads]
    if stream.name == "pattern":
        return []
    if stream.name in MLP_STREAMS:
        return [f"mlp.{location.layer}"]
    if stream.name == "attn_out":
        return [f"attn.{location.layer}"]
    return []


def in_circuit(location: Location, circuit: frozenset[str] | None, n_heads: int) -> bool | None:
    """True when every node the location patches is declared; None without a circuit or without nodes."""
    nodes = location_nodes(location, n_heads)
    if circuit is None or not nodes:
        return None
    attn_in = f"attn.{location.layer}" in circuit
    return all(node in circuit or (attn_in and node.startswith("head.")) for node in nodes)
