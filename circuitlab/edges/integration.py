"""Where EAP-family scorers take their gradients: the runs of one batch, and which senders each run's gradients score.

Every scorer estimates an edge s -> r as grad_r . (source_s - clean_s); they differ in where grad_r is taken
(after EAP-IG's reference code, github hannamw/EAP-IG, src/eap/attribute.py: `get_scores_eap`,
`get_scores_eap_ig`, `get_scores_clean_corrupted`, `get_scores_ig_activations`; the MIB circuit track,
github hannamw/MIB-circuit-track, run_attribution.py, names them `EAP`, `EAP-IG-inputs`, `clean-corrupted`,
`EAP-IG-activations`):

- `clean` (EAP): the clean run;
- `inputs` (EAP-IG-inputs): `steps` runs whose input embeddings lie on the line from the counterfactual's to the
  clean ones, alpha = k / steps, k = 1..steps (one step is EAP);
- `clean-corrupted`: the clean run and the corrupted run (the input embeddings at alpha = 1 and 0), averaged;
- `activations` (EAP-IG over activations): for each *component* (the input; a layer's attention heads together;
  a layer's MLP) `steps` runs in which that component's output alone lies at alpha on the line from its
  counterfactual to its clean output (the rest of the model computes on), and the gradients of those runs score
  the edges *out of that component's senders* only. One step is EAP (alpha = 1 leaves every output clean, and
  an edge's receiver lies after its sender, so its gradient does not pass through the held output).
- `activations-mib`: the reference's own arithmetic: the same runs, but every run's gradients score every edge
  (averaged over components x steps runs), so an edge's gradient also comes from runs that interpolate other
  components, and from runs that hold a later component fixed (its gradient cut: the reference replaces the
  output by a constant). With one step it is not EAP. `activations` keeps the definition (IG along each
  sender's own activation) that makes one step EAP; this one reproduces MIB's numbers.

A component's interpolated output is a constant in its run (no gradient flows into the component), as in the
reference. With the `mean` / `zero` counterfactuals the line starts at the mean / zero output (the reference's
`mean` runs start it at zero: its corrupted activations are never filled for mean ablations).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.hooks import INPUT_HOOK

INTEGRATIONS = ("clean", "inputs", "clean-corrupted", "activations", "activations-mib")


@dataclass(frozen=True)
class Run:
    """One forward + backward: `component` (0 the input, then each layer's attention, its MLP) at `alpha` on the
    line from its counterfactual (0) to its clean (1) output."""

    alpha: float
    component: int = 0


@dataclass(frozen=True)
class Segment:
    """Runs whose summed receiver gradients, divided by their number, score the senders `first`..`last - 1`."""

    first: int
    last: int
    runs: tuple[Run, ...]


def components(graph: EdgeGraph) -> list[tuple[str, int, int]]:
    """(hook whose output a run replaces, first sender, last sender + 1) of every component, in forward order: the
    input (`blocks.0.hook_resid_pre`), each layer's attention output (`hook_attn_out`: what the layer adds to the
    residual stream, its heads' outputs summed with the bias, after the post-norm where there is one) and MLP
    output (`hook_mlp_out`)."""
    out = [(INPUT_HOOK, 0, 1)]
    for layer in range(graph.n_layers):
        first = graph.head_sender(layer, 0)
        out.append((f"blocks.{layer}.hook_attn_out", first, first + graph.n_heads))
        if graph.has_mlp:
            out.append((f"blocks.{layer}.hook_mlp_out", graph.mlp_sender(layer), graph.mlp_sender(layer) + 1))
    return out


def segments(graph: EdgeGraph, integration: str, steps: int) -> list[Segment]:
    """The runs of one batch, grouped by the senders they score. The first run is always the clean one (alpha 1 on
    the input): it records the clean senders' outputs the other runs interpolate from."""
    everyone = len(graph.senders)
    line = tuple(k / steps for k in range(steps, 0, -1))
    if integration == "clean":
        return [Segment(0, everyone, (Run(1.0),))]
    if integration == "inputs":
        return [Segment(0, everyone, tuple(Run(alpha) for alpha in line))]
    if integration == "clean-corrupted":
        return [Segment(0, everyone, (Run(1.0), Run(0.0)))]
    parts = components(graph)
    if integration == "activations":
        return [Segment(first, last, tuple(Run(alpha, c) for alpha in line)) for c, (_, first, last) in enumerate(parts)]
    if integration == "activations-mib":
        return [Segment(0, everyone, tuple(Run(alpha, c) for c in range(len(parts)) for alpha in line))]
    raise ValueError(f"unknown integration {integration!r}; allowed: {INTEGRATIONS}")


def replacement(graph: EdgeGraph, run: Run, clean_input: Tensor | None, source_input: Tensor,
                difference: Callable[[int, int], Tensor]) -> tuple[str, Callable] | None:
    """The forward hook that puts the run's component at its alpha (None for the clean run). The input becomes a
    fresh leaf on its line (its gradient is read); any other component's output becomes the clean output plus
    (1 - alpha) x (source - clean) summed over its senders, detached (`difference(first, last)`: that sum, as
    (batch, pos, d_model))."""
    if run.component == 0:
        if run.alpha == 1.0:
            return None

        def interpolate(activation: Tensor, hook) -> Tensor:
            return (source_input + run.alpha * (clean_input - source_input)).detach().requires_grad_(True)

        return INPUT_HOOK, interpolate
    name, first, last = components(graph)[run.component]

    def hold(activation: Tensor, hook) -> Tensor:
        return activation.detach() + (1.0 - run.alpha) * difference(first, last).to(activation.dtype)

    return name, hold


def start_layer(graph: EdgeGraph, segment: Segment, run: Run) -> int:
    """The first block a run computes: its component's block when the segment scores only senders from that
    component on (every receiver they feed, and the held output, lie in that block or later: the earlier blocks
    are the clean run's, their residual stream taken from it), else 0. `activations` runs start there, which
    halves their work on average; `activations-mib` runs score every sender and start at 0."""
    if run.component == 0:
        return 0
    _, first, _ = components(graph)[run.component]
    return graph.sender_layer(first) if segment.first >= first else 0
