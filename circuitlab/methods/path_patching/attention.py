"""Attention patterns of chosen heads, averaged over prompts, as a tidy table for plotting."""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from circuitlab.errors import ConfigError
from circuitlab.tokens import token_label

MAX_AUTO_HEADS = 8


def resolve_heads(spec, n_layers: int, n_heads: int, field: str = "method.pattern_heads") -> list[tuple[int, int]] | None:
    """`auto` -> None (chosen from the results); otherwise a list of [layer, head] pairs, checked."""
    if spec == "auto":
        return None
    allowed = f"auto, [] or [[layer, head], ...] with layers 0..{n_layers - 1} and heads 0..{n_heads - 1}"
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(field, spec, allowed)
    heads = []
    for item in spec:
        ok = isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in item)
        if not ok or not (0 <= item[0] < n_layers and 0 <= item[1] < n_heads):
            raise ConfigError(field, item, allowed)
        heads.append((int(item[0]), int(item[1])))
    return heads


def mean_patterns(
    model: HookedTransformer, tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"], heads: list[tuple[int, int]]
) -> tuple[Float[Tensor, "head query key"], int]:
    """Each head's attention pattern averaged over the prompts as long as the first one (so that positions
    mean the same token slot); returns the patterns and how many prompts were averaged."""
    same = lengths == lengths[0]
    length = int(lengths[0])
    names = {f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[same, :length].to(model.cfg.device), names_filter=lambda n: n in names,
                                        stop_at_layer=max(layer for layer, _ in heads) + 1)
    patterns = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][:, head].float().mean(0) for layer, head in heads])
    return patterns.cpu(), int(same.sum())


def shared_labels(tokens: Int[Tensor, "batch pos"], lengths: Int[Tensor, " batch"], named_positions: dict[str, Int[Tensor, " batch"]],
                  tokenizer) -> list[str]:
    """A label per position that holds for every prompt `mean_patterns` averages (those as long as the first): its
    token where they all share it, else the named position (IO, S1, ...) every one of them has there, else
    `(varies)`."""
    same = lengths == lengths[0]
    length = int(lengths[0])
    rows = tokens[same, :length]
    first = tokenizer.convert_ids_to_tokens(rows[0].tolist())
    labels = []
    for i in range(length):
        if bool((rows[:, i] == rows[0, i]).all()):
            labels.append(first[i])
            continue
        names = [name for name, where in named_positions.items() if bool((where[same] == i).all())]
        labels.append(names[0] if names else "(varies)")
    return labels


def patterns_frame(patterns: Float[Tensor, "head query key"], heads: list[tuple[int, int]], tokens: list[str], prompts: str, n_prompts: int) -> pd.DataFrame:
    """One row per (head, query, key): the mean attention weight, with `i:label` labels (`shared_labels`)."""
    labels = [f"{i}:{token_label(t, max_chars=1000)}" for i, t in enumerate(tokens)]  # readable; a newline token stays visible (↵)
    n = patterns.shape[-1]
    rows = [
        {"head": f"{layer}.{head}", "layer": layer, "head_index": head, "query": q, "key": k,
         "query_label": labels[q], "key_label": labels[k], "weight": float(patterns[i, q, k]),
         "prompts": prompts, "n_prompts": n_prompts}
        for i, (layer, head) in enumerate(heads) for q in range(n) for k in range(n)
    ]
    return pd.DataFrame(rows)
