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
from circuitlab.tokens import token_label


@dataclass(frozen=True)
class Stream:
    """An activation site repeated in every layer.

    `pos_dim` / `head_dim` are the axes of the hooked activation that index positions and heads (batch is
    axis 0); `head_dim` is None for streams without heads. `needs_attn_result` marks hooks that exist only
    with TransformerLens' `use_attn_result`.
    """

    name: str
    hook: str
    aliases: tuple[str, ...] = ()
    description: str = ""
    pos_dim: int = 1
    head_dim: int | None = None
    head_aliases: tuple[str, ...] = ()
    needs_attn_result: bool = False
    key_value: bool = False  # grouped-query attention: indexed by the key / value heads, not the query heads

    def hook_name(self, layer: int) -> str:
        return self.hook.format(layer=layer)

    @property
    def has_heads(self) -> bool:
        return self.head_dim is not None

    def n_heads(self, shape) -> int:
        """How many heads this stream has in a model of `shape` (a ModelShape or HookedTransformerConfig)."""
        kv = getattr(shape, "n_key_value_heads", None)
        return kv if self.key_value and kv else shape.n_heads


STREAMS: dict[str, Stream] = {}
PER_HEAD_ALIASES: set[str] = set()


def _register(stream: Stream) -> None:
    for key in (stream.name, *stream.aliases, *stream.head_aliases):
        if key in STREAMS:
            raise ValueError(f"duplicate stream name {key}")
        STREAMS[key] = stream
    PER_HEAD_ALIASES.update(stream.head_aliases)


for _stream in (
    Stream("resid_pre", "blocks.{layer}.hook_resid_pre", ("block_input",), "residual stream entering the block"),
    Stream("resid_mid", "blocks.{layer}.hook_resid_mid", (), "residual stream between attention and MLP"),
    Stream("resid_post", "blocks.{layer}.hook_resid_post", ("block_output",), "residual stream leaving the block"),
    Stream("attn_in", "blocks.{layer}.ln1.hook_normalized", ("attention_input",), "attention's normalised input"),
    Stream("q", "blocks.{layer}.attn.hook_q", ("query_output",), "queries", head_dim=2, head_aliases=("head_query_output",)),
    Stream("k", "blocks.{layer}.attn.hook_k", ("key_output",), "keys", head_dim=2, head_aliases=("head_key_output",), key_value=True),
    Stream("v", "blocks.{layer}.attn.hook_v", ("value_output",), "values", head_dim=2, head_aliases=("head_value_output",), key_value=True),
    Stream("pattern", "blocks.{layer}.attn.hook_pattern", ("attention_weight",), "attention pattern (positions index the query)", pos_dim=2, head_dim=1),
    Stream("z", "blocks.{layer}.attn.hook_z", ("attention_value_output",), "attention-weighted values, per head", head_dim=2, head_aliases=("head_attention_value_output",)),
    Stream("result", "blocks.{layer}.attn.hook_result", (), "each head's output written to the residual stream", head_dim=2, head_aliases=("head_result",), needs_attn_result=True),
    Stream("attn_out", "blocks.{layer}.hook_attn_out", ("attention_output",), "attention block output"),
    Stream("mlp_in", "blocks.{layer}.ln2.hook_normalized", ("mlp_input",), "MLP's normalised input"),
    Stream("mlp_post", "blocks.{layer}.mlp.hook_post", ("mlp_activation",), "MLP hidden activation"),
    Stream("mlp_out", "blocks.{layer}.hook_mlp_out", ("mlp_output",), "MLP block output"),
):
    _register(_stream)


MLP_STREAMS = ("mlp_in", "mlp_post", "mlp_out")


def absent_because(stream: Stream, shape) -> str | None:
    """Why a model of `shape` (a ModelShape or HookedTransformerConfig) has no such activation, or None."""
    attn_only = getattr(shape, "attn_only", False) or getattr(shape, "d_mlp", 0) is None
    if stream.name in MLP_STREAMS and attn_only:
        return "the model is attention-only"
    if stream.name == "resid_mid" and (attn_only or getattr(shape, "parallel_attn_mlp", False)):
        return "its blocks run attention and MLP side by side" if not attn_only else "the model is attention-only"
    if stream.name in ("attn_in", "mlp_in") and getattr(shape, "normalization_type", "LN") is None:
        return "the model has no normalisation layers"
    return None


def check_present(streams: list[str], shape, field: str = "sweep.streams") -> None:
    """One line for a stream the model does not have, naming the ones it has."""
    for key in streams:
        reason = absent_because(get_stream(key, field), shape)
        if reason:
            present = [name for name in stream_names() if absent_because(STREAMS[name], shape) is None]
            raise ConfigError(field, key, present, hint=f"not in this model: {reason}")


def stream_names() -> list[str]:
    """Canonical names, each once."""
    return list(dict.fromkeys(s.name for s in STREAMS.values()))


def get_stream(name: str, field: str = "sweep.streams") -> Stream:
    if name not in STREAMS:
        raise ConfigError(field, name, sorted(STREAMS))
    return STREAMS[name]


# A position spec: one index, a tuple of indices patched together, a named position (IO, END, ...), or "all".
PositionSpec = Union[int, str, tuple]
HEAD_MODES = ("each", "all", "leave_one_out", "cumulative")


@dataclass(frozen=True)
class Location:
    """One sweep point: patch `stream` at `layer`, at `positions`, in `heads` (None: the whole stream).

    `group` names how a head set was built ("", "leave_one_out", "cumulative") and `head` is the head the
    point is about (the single head, the one left out, or the one just added).
    """

    stream: str
    layer: int
    positions: PositionSpec
    heads: tuple[int, ...] | None = None
    group: str = ""
    head: int | None = None

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


def _check_index(p, width: int, named: list[str], same_length: bool, field: str) -> int:
    if isinstance(p, bool) or not isinstance(p, int) or not -width <= p < width:
        raise ConfigError(field, p, f"every, all, {', '.join(named) or 'no named positions'}, or integers 0..{width - 1} (prompt length {width})")
    if not same_length:
        raise CircuitlabError(f"{field}={p}: raw position indices need prompts of one length; use named positions ({', '.join(named)})")
    return p % width


def resolve_positions(spec, width: int, named: list[str], same_length: bool, field: str = "sweep.positions") -> list[PositionSpec]:
    """The position specs of a sweep. Raw indices need prompts of one length; named positions do not.
    A nested list is one point patching all its indices together."""
    if spec == "every":
        if not same_length:
            raise CircuitlabError(
                f"{field}=every needs prompts of one length; pick one template (task.templates=NAME), set "
                f"task.fixed_length, or use named positions ({', '.join(named)})"
            )
        return list(range(width))
    specs = [spec] if isinstance(spec, (int, str)) else list(spec)
    if "every" in specs:  # `every` inside a list expands to each index, e.g. [all, every]
        at = specs.index("every")
        specs[at : at + 1] = resolve_positions("every", width, named, same_length, field)
    out: list[PositionSpec] = []
    for p in specs:
        if isinstance(p, str):
            if p != "all" and p not in named:
                raise ConfigError(field, p, ["every", "all", *named, f"integers 0..{width - 1}"])
            out.append(p)
        elif isinstance(p, (list, tuple)):
            if not p:
                raise ConfigError(field, "[]", "a non-empty list of position indices")
            out.append(tuple(sorted({_check_index(i, width, named, same_length, field) for i in p})))
        else:
            out.append(_check_index(p, width, named, same_length, field))
    return out


def resolve_heads(spec, order, stream_key: str, n_heads: int, field: str = "sweep.heads") -> list[tuple[tuple[int, ...] | None, str, int | None]]:
    """(heads, group, head) for each point of one stream. `spec`: null (whole stream; each head for the
    `head_*` aliases), each, all, leave_one_out, cumulative (in `order`), a list of heads, or a list of lists."""
    stream = get_stream(stream_key)
    if spec is None:
        if stream_key not in PER_HEAD_ALIASES:
            return [(None, "", None)]
        spec = "each"
    if not stream.has_heads:
        raise ConfigError(field, spec, f"null for stream {stream_key}, which has no heads (streams with heads: {', '.join(sorted(k for k, s in STREAMS.items() if s.has_heads))})")
    everyone = list(range(n_heads))
    if spec == "each":
        return [((h,), "", h) for h in everyone]
    if spec == "all":
        return [(tuple(everyone), "", None)]
    if spec == "leave_one_out":
        return [(tuple(x for x in everyone if x != h), "leave_one_out", h) for h in everyone]
    if spec == "cumulative":
        ranked = list(order) if order else everyone
        for h in ranked:
            _check_head(h, n_heads, "sweep.head_order")
        return [(tuple(ranked[: i + 1]), "cumulative", h) for i, h in enumerate(ranked)]
    if isinstance(spec, str):
        raise ConfigError(field, spec, [*HEAD_MODES, "a list of heads", "a list of lists of heads"])
    points = []
    for item in [spec] if isinstance(spec, int) else spec:
        if isinstance(item, (list, tuple)):
            heads = tuple(sorted({_check_head(h, n_heads, field) for h in item}))
            points.append((heads, "", heads[0] if len(heads) == 1 else None))
        else:
            h = _check_head(item, n_heads, field)
            points.append(((h,), "", h))
    return points


def _check_head(h, n_heads: int, field: str) -> int:
    if isinstance(h, bool) or not isinstance(h, int) or not 0 <= h < n_heads:
        raise ConfigError(field, h, f"integers 0..{n_heads - 1}")
    return h


def enumerate_locations(streams: list[str], layers: list[int], positions: list[PositionSpec], heads=None, head_order=None, shape=None) -> list[Location]:
    """Streams x layers x heads x positions, in that order: a plain list, enumerable and shardable. `shape` (a
    ModelShape) gives each stream's head count; it may be None when no stream has heads."""
    locations = []
    for key in streams:
        stream = get_stream(key)
        name = stream.name
        head_points = resolve_heads(heads, head_order, key, stream.n_heads(shape) if shape is not None else 0)
        for layer in layers:
            for heads_, group, head in head_points:
                locations += [Location(name, layer, p, heads_, group, head) for p in positions]
    return locations


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
        elif isinstance(spec, tuple):
            mask[i, :, list(spec)] = True
        else:
            mask[i, :, spec] = True
    return mask


def head_mask(heads: list[tuple[int, ...] | None], n_heads: int) -> Bool[Tensor, "point head"]:
    mask = torch.zeros(len(heads), n_heads, dtype=torch.bool)
    for i, hs in enumerate(heads):
        mask[i, list(range(n_heads)) if hs is None else list(hs)] = True
    return mask


def cell_mask(
    stream: Stream, positions: Bool[Tensor, "row pos"], heads: Bool[Tensor, "row head"] | None, ndim: int
) -> Bool[Tensor, "..."]:
    """A (row, position) mask and an optional (row, head) mask, laid out to broadcast against the stream's
    activation (rows on axis 0, positions and heads on the stream's own axes)."""
    shape = [positions.shape[0]] + [1] * (ndim - 1)
    shape[stream.pos_dim] = positions.shape[1]
    mask = positions.view(shape)
    if heads is not None:
        head_shape = [heads.shape[0]] + [1] * (ndim - 1)
        head_shape[stream.head_dim] = heads.shape[1]
        mask = mask & heads.view(head_shape)
    return mask


def position_label(spec: PositionSpec, first_prompt_tokens: list[str]) -> str:
    """How a position appears in results and figures: `3:Mary` for an index (the first prompt's token, readable:
    `tokens.token_label`), `0-16` for a run of indices."""
    if isinstance(spec, tuple):
        if len(spec) > 2 and list(spec) == list(range(spec[0], spec[-1] + 1)):
            return f"{spec[0]}-{spec[-1]}"
        return ",".join(map(str, spec))
    if isinstance(spec, int):
        token = first_prompt_tokens[spec] if spec < len(first_prompt_tokens) else ""
        return f"{spec}:{token_label(token, max_chars=1000)}"
    return spec


def position_value(spec: PositionSpec) -> str:
    """The `position` column: the index, the indices joined by commas, or the name."""
    return ",".join(map(str, spec)) if isinstance(spec, tuple) else str(spec)


def heads_value(heads: tuple[int, ...] | None) -> str:
    """The `heads` column: the heads patched together, or empty for the whole stream."""
    return "" if heads is None else ",".join(map(str, heads))
