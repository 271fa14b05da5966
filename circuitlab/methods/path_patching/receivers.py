"""Path patching's endpoints, parsed and checked before the weights load: the receivers (the input of a block whose
value run 2 replaces: `resid_pre.L`, `resid_post.L`, `q.L.H`, `k.L.H`, `v.L.H`) and the senders (a head, a head
group, a whole attention layer or an MLP) that can reach them."""

from __future__ import annotations

from dataclasses import dataclass

from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import Location, get_stream

RESID_RECEIVERS = ("resid_pre", "resid_post")
HEAD_RECEIVERS = ("q", "k", "v")
SENDER_STREAMS = ("z", "attn_out", "mlp_out")
RECEIVER_SYNTAX = "resid_pre.L, resid_post.L, q.L.H, k.L.H or v.L.H (L a layer, -1 the last; H a head)"


@dataclass(frozen=True)
class Receiver:
    """The input of block `block` that run 2 replaces: the whole residual stream, or one head's q / k / v."""

    stream: str
    layer: int
    head: int | None = None

    @property
    def block(self) -> int:
        """The block whose input this is (`n_layers` for the final residual stream)."""
        return self.layer + 1 if self.stream == "resid_post" else self.layer

    @property
    def label(self) -> str:
        return f"{self.stream}.{self.layer}" + ("" if self.head is None else f".{self.head}")


def parse_receiver(spec: str, n_layers: int, n_heads: int, field: str = "method.receivers") -> Receiver:
    """`resid_post.-1` -> Receiver("resid_post", n_layers - 1); `v.1.2` -> the v input of head 2 in layer 1."""
    parts = str(spec).split(".")
    try:
        stream = get_stream(parts[0], field).name
        numbers = [int(p) for p in parts[1:]]
    except (CircuitlabError, ValueError):
        raise ConfigError(field, spec, RECEIVER_SYNTAX) from None
    wants_head = stream in HEAD_RECEIVERS
    if stream not in RESID_RECEIVERS + HEAD_RECEIVERS or len(numbers) != 1 + wants_head:
        raise ConfigError(field, spec, RECEIVER_SYNTAX)
    layer = numbers[0] + n_layers if numbers[0] < 0 else numbers[0]
    if not 0 <= layer < n_layers:
        raise ConfigError(field, spec, f"layers 0..{n_layers - 1} (or -1 for the last)")
    head = numbers[1] if wants_head else None
    if head is not None and not 0 <= head < n_heads:
        raise ConfigError(field, spec, f"heads 0..{n_heads - 1} of layer {layer}")
    return Receiver(stream, layer, head)


def check_senders(senders: list[Location], receivers: list[Receiver], begin_layer: int) -> list[Location]:
    """The senders that can reach a receiver (layer in [begin_layer, last receiver block)); errors if none."""
    for receiver in receivers:
        if receiver.block <= begin_layer:
            raise ConfigError(
                "method.receivers", receiver.label,
                f"receivers after method.begin_layer={begin_layer} (this one reads layers < {receiver.block})",
            )
    for loc in senders:
        if loc.stream not in SENDER_STREAMS:
            raise ConfigError("sweep.streams", loc.stream, f"{', '.join(SENDER_STREAMS)} (path patching senders)")
        if loc.positions != "all":
            raise ConfigError("sweep.positions", loc.positions, "[all] (path patching patches senders at every position)")
    last = max(r.block for r in receivers)
    kept = [loc for loc in senders if begin_layer <= loc.layer < last]
    if not kept:
        raise CircuitlabError(
            f"sweep: no sender left in layers [{begin_layer}, {last}) (method.begin_layer={begin_layer}, "
            f"receivers {', '.join(r.label for r in receivers)}); widen sweep.layers or lower method.begin_layer"
        )
    return sorted(kept, key=lambda loc: loc.layer)
