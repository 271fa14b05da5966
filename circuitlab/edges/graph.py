"""The computational graph of edge-level circuit discovery, in the layout EAP-IG and MIB use.

Senders (nodes whose output enters the residual stream): `input` (token + position embeddings, the residual
stream entering block 0), every attention head `a{L}.h{H}` (its output, TransformerLens' `hook_result`) and every
MLP `m{L}`. Receivers (inputs read from the residual stream): each head's query, key and value inputs separately
(`a{L}.h{H}<q>`, `<k>`, `<v>`; per query head under grouped-query attention), every MLP `m{L}`, and `logits`
(the final residual stream). An edge joins every sender to every receiver that reads it: senders of earlier
layers (and the input); an MLP also reads its own layer's heads unless attention and MLP run in parallel.
Edge names: `{sender}->{receiver}`, e.g. `input->a0.h0<q>`, `a0.h1->m1`, `m11->logits`. GPT-2 small has
32,491 edges.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import torch
from jaxtyping import Bool
from torch import Tensor

from circuitlab.errors import ConfigError

QKV = ("q", "k", "v")
_SENDER = re.compile(r"^(input|a(\d+)\.h(\d+)|m(\d+))$")
_RECEIVER = re.compile(r"^(logits|a(\d+)\.h(\d+)<([qkv])>|m(\d+))$")


@dataclass(frozen=True)
class EdgeGraph:
    """Senders and receivers of a model of `n_layers` x `n_heads` (no MLPs when `has_mlp` is False)."""

    n_layers: int
    n_heads: int
    parallel_attn_mlp: bool = False
    has_mlp: bool = True
    d_model: int = 0

    @classmethod
    def of(cls, shape) -> "EdgeGraph":
        """The graph of a ModelShape or HookedTransformerConfig."""
        return cls(shape.n_layers, shape.n_heads, bool(shape.parallel_attn_mlp), getattr(shape, "d_mlp", 1) is not None
                   and not getattr(shape, "attn_only", False), shape.d_model)

    @property
    def per_layer_senders(self) -> int:
        return self.n_heads + self.has_mlp

    @property
    def per_layer_receivers(self) -> int:
        return 3 * self.n_heads + self.has_mlp

    @cached_property
    def senders(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + ([f"m{layer}"] if self.has_mlp else [])
        return names

    @cached_property
    def receivers(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<{x}>" for x in QKV for h in range(self.n_heads)] + ([f"m{layer}"] if self.has_mlp else [])
        return names + ["logits"]

    def head_sender(self, layer: int, head: int) -> int:
        return 1 + layer * self.per_layer_senders + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * self.per_layer_senders + self.n_heads

    def head_receiver(self, layer: int, qkv: str, head: int) -> int:
        return layer * self.per_layer_receivers + QKV.index(qkv) * self.n_heads + head

    def mlp_receiver(self, layer: int) -> int:
        return layer * self.per_layer_receivers + 3 * self.n_heads

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.per_layer_receivers

    def receiver_layer(self, receiver: int) -> int:
        """The block whose input the receiver is (`n_layers` for the logits)."""
        return min(receiver // self.per_layer_receivers, self.n_layers)

    def receiver_kind(self, receiver: int) -> tuple[str, int | None]:
        """('q' | 'k' | 'v', head), ('mlp', None) or ('logits', None)."""
        if receiver == self.logits_receiver:
            return "logits", None
        within = receiver % self.per_layer_receivers
        if within >= 3 * self.n_heads:
            return "mlp", None
        return QKV[within // self.n_heads], within % self.n_heads

    def sender_layer(self, sender: int) -> int:
        """-1 for the input, else the sender's block."""
        return -1 if sender == 0 else (sender - 1) // self.per_layer_senders

    def feeding(self, receiver: int) -> int:
        """How many senders (the first ones, in forward order) a receiver reads."""
        layer = self.receiver_layer(receiver)
        if receiver == self.logits_receiver:
            return len(self.senders)
        before = 1 + layer * self.per_layer_senders
        is_mlp = self.has_mlp and receiver == self.mlp_receiver(layer)
        return before + (self.n_heads if is_mlp and not self.parallel_attn_mlp else 0)

    @cached_property
    def real(self) -> Bool[Tensor, "sender receiver"]:
        """Which (sender, receiver) pairs are edges."""
        counts = torch.tensor([self.feeding(r) for r in range(len(self.receivers))])
        return torch.arange(len(self.senders))[:, None] < counts[None, :]

    @cached_property
    def edges(self) -> list[tuple[int, int]]:
        """Every edge as (sender, receiver) indices, receiver by receiver in forward order."""
        return [(s, r) for r in range(len(self.receivers)) for s in range(self.feeding(r))]

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    def edge_name(self, sender: int, receiver: int) -> str:
        return f"{self.senders[sender]}->{self.receivers[receiver]}"

    @cached_property
    def edge_names(self) -> list[str]:
        return [self.edge_name(s, r) for s, r in self.edges]

    @cached_property
    def _sender_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.senders)}

    @cached_property
    def _receiver_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.receivers)}

    def parse_edge(self, name: str, field: str) -> tuple[int, int]:
        """`a0.h1->m1` -> its (sender, receiver); one line naming the field and the syntax when it is not an edge."""
        sender, _, receiver = str(name).partition("->")
        sender, receiver = sender.strip(), receiver.strip()
        syntax = (f"an edge SENDER->RECEIVER of this model: senders input, a{{L}}.h{{H}}, m{{L}}; receivers a{{L}}.h{{H}}<q|k|v>, "
                  f"m{{L}}, logits (L 0..{self.n_layers - 1}, H 0..{self.n_heads - 1}; e.g. input->a0.h0<q>)")
        if not _SENDER.match(sender) or not _RECEIVER.match(receiver):
            raise ConfigError(field, name, syntax)
        s, r = self._sender_index.get(sender), self._receiver_index.get(receiver)
        if s is None or r is None:
            missing = sender if s is None else receiver
            raise ConfigError(field, name, f"nodes of this model ({missing} does not exist: layers 0..{self.n_layers - 1}, "
                              f"heads 0..{self.n_heads - 1}{'' if self.has_mlp else ', no MLPs'})")
        if not self.real[s, r]:
            raise ConfigError(field, name, f"edges from an earlier node to a later one ({sender} does not feed {receiver})")
        return s, r

    def config(self) -> dict:
        """The `cfg` entry of an EAP-IG Graph JSON."""
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "parallel_attn_mlp": self.parallel_attn_mlp, "d_model": self.d_model}
