"""Where to intervene: stream names -> TransformerLens hook names, locations, and sweep enumeration.

A `Location` is (stream, layer, heads, positions). Streams are addressed by their TransformerLens name
(`resid_pre`) or by the pyvene name researchers already type (`block_input`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from jaxtyping import Bool
from torch import Tensor

from circuitlab.errors import CircuitlabError, ConfigError


@dataclass(frozen=True)
class Stream:
    """An activation site repeated in every layer."""

    name: str
    hook: str
    aliases: tuple[str, ...] = ()
    description: str = ""

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)


STREAMS: dict[str, Stream] = {}


def _register(stream: Stream) -> None:
    for key in (stream.name, *stream.aliases):
        if key in STREAMS:
            raise ValueError(f"duplicate stream name {key}")
        STREAMS[key] = stream


for _stream in (
    Stream("resid_pre", "blocks.{layer}.hook_resid_pre", ("block_input",), "residual stream entering the block"),
    Stream("resid_mid", "blocks.{layer}.hook_resid_mid", (), "residual stream between attention and MLP"),
    Stream("resid_post", "blocks.{layer}.hook_resid_post", ("block_output",), "residual stream leaving the block"),
    Stream("attn_out", "blocks.{layer}.hook_attn_out", ("attention_output",), "attention block output"),
    Stream("mlp_out", "blocks.{layer}.hook_mlp_out", ("mlp_output",), "MLP block output"),
):
    _register(_stream)


def stream_names() -> list[str]:
    """Canonical names, each once."""
    return list(dict.fromkeys(s.name for s in STREAMS.values()))


def get_stream(name: str, field: str = "sweep.streams") -> Stream:
    if name not in STREAMS:
        raise ConfigError(field, name, sorted(STREAMS))
    return STREAMS[name]


# A position spec: one index, a named position (IO, END, ...), or "all" (every position at once).
PositionSpec = Union[int, str]


@dataclass(frozen=True)
class Location:
    """One sweep point: patch `stream` at `layer`, at `positions` (all of them together)."""

    stream: str
    layer: int
    positions: PositionSpec
    heads: tuple[int, ...] | None = None

    @property
    def hook_name(self) -> str:
        return STREAMS[self.stream].hook_name(self.layer)


def resolve_layers(spec, n_layers: int, field: str = "sweep.layers") -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    layers = [spec] if isinstance(spec, int) else list(spec)
    for layer in layers:
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n_layers:
            raise ConfigError(field, layer, f"all, or integers 0..{n_layers - 1}")
    return layers


def resolve_positions(spec, width: int, named: list[str], same_length: bool, field: str = "sweep.positions") -> list[PositionSpec]:
    """The position specs of a sweep. Raw indices need prompts of one length; named positions do not."""
    if spec == "every":
        if not same_length:
            raise CircuitlabError(
                f"{field}=every needs prompts of one length; pick one template (task.templates=NAME), set "
                f"task.fixed_length, or use named positions ({', '.join(named)})"
            )
        return list(range(width))
    specs = [spec] if isinstance(spec, (int, str)) else list(spec)
    for p in specs:
        if isinstance(p, str):
            if p != "all" and p not in named:
                raise ConfigError(field, p, ["every", "all", *named, f"integers 0..{width - 1}"])
        elif isinstance(p, bool) or not isinstance(p, int) or not -width <= p < width:
            raise ConfigError(field, p, f"every, all, {', '.join(named)}, or integers 0..{width - 1} (prompt length {width})")
        elif not same_length:
            raise CircuitlabError(f"{field}={p}: raw position indices need prompts of one length; use named positions ({', '.join(named)})")
    return [p % width if isinstance(p, int) else p for p in specs]


def enumerate_locations(streams: list[str], layers: list[int], positions: list[PositionSpec]) -> list[Location]:
    """Streams x layers x positions, stream-major: a plain list, enumerable and shardable."""
    canonical = [get_stream(s).name for s in streams]
    return [Location(s, layer, p) for s in canonical for layer in layers for p in positions]


def position_mask(
    specs: list[PositionSpec], width: int, named_positions: dict[str, Tensor], n_prompts: int
) -> Bool[Tensor, "point batch pos"]:
    """For each position spec, which (prompt, position) cells it patches."""
    mask = torch.zeros(len(specs), n_prompts, width, dtype=torch.bool)
    rows = torch.arange(n_prompts)
    for i, spec in enumerate(specs):
        if spec == "all":
            mask[i] = True
        elif isinstance(spec, str):
            mask[i, rows, named_positions[spec]] = True
        else:
            mask[i, :, spec] = True
    return mask


def position_label(spec: PositionSpec, first_prompt_tokens: list[str]) -> str:
    """How a position appears in results and figures: `3:Mary` for an index, the name otherwise."""
    if isinstance(spec, int):
        token = first_prompt_tokens[spec] if spec < len(first_prompt_tokens) else ""
        return f"{spec}:{token.replace('Ġ', ' ').strip()}"
    return spec
