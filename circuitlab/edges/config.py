"""The config schema the edge methods share (extends MethodConfig; method/eap.yaml, eap_ig.yaml and
edge_patching.yaml fill it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from circuitlab.config import MethodConfig


@dataclass
class EdgeMethodConfig(MethodConfig):
    """Edge scores and the circuit cut from them. `counterfactual`: patching (the pair's corrupted prompt), mean
    (over the clean prompts, per position) or zero. `select`: topn / greedy (a circuit that keeps `n_edges` edges
    once pruned to paths from the input to the logits), threshold (`threshold`) or milp (the connected circuit of at
    most `n_edges` edges with the largest total score, by an integer program: graphs of at most 40,000 edges);
    `absolute`: rank by |score|. `curve`: percentages of edges kept for MIB's faithfulness curve ([] skips it).
    `expected`: edges of a known circuit, for the AUROC of the scores against it. `batch_size`: prompts per forward
    and backward (null: as many as `memory_budget_mb` holds). `bootstrap`: resamples of the prompts (0: none), each
    scored; the circuit keeps the edges that `select` picks in at least `bootstrap_keep` of them. `bootstrap_keep`:
    that share (edges.csv's `frequency` column). `export`: also write the scores and circuits for other tools: mib
    (mib/, MIB's circuit-track submission layout)."""

    name: str = "eap"
    counterfactual: str = "patching"
    select: str = "topn"
    n_edges: int = 20
    threshold: float = 0.0
    absolute: bool = True
    curve: list[Any] = field(default_factory=lambda: [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100])
    expected: Optional[list[str]] = None
    batch_size: Optional[int] = None
    bootstrap: int = 0
    bootstrap_keep: float = 0.5
    export: list[str] = field(default_factory=list)
