"""Which of DAS's locations train together: groups that fit the memory budget (`memory_budget_mb`).

Locations of one stream and width can train in one batch (one parameter tensor, one forward and backward for all of
them). A training forward keeps every activation from its first layer on for the backward pass, so a group's memory
grows with the layers after its first one and with the positions from its first intervened one on:

    group bytes ~ layers x weights per layer                         (autograd's copies of the frozen weights)
                + locations x batch_size x [layers x (rows x per_row + keys x per_key) + 3 d_vocab]

in bytes per float (rows: positions computed; keys: the prompt width; per_row = 10 d_model + 4 d_mlp + 3 n_heads x
keys, per_key = 4 n_heads d_head: what autograd keeps of a pre-norm block; measured on SmolLM2-135M, where it
overestimates by 10-35 %). Sorted by (layer, first position), a stream's locations are cut into consecutive groups
whose estimate fits the budget; a location that alone exceeds it trains alone (one warning). Each location trains
as it would in any group: its own parameters, seed, rotation and Adam state, the same batches in the same order, so
grouping changes results only by float rounding (tests/test_das.py). IIA is measured in batches of test prompts
sized by the same budget. The progress bar counts locations and moves with every training step.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from circuitlab.locations import Location, position_mask
from circuitlab.tasks.base import PromptPairs

log = logging.getLogger("circuitlab")
MAX_EVAL_BATCH = 256


@dataclass(frozen=True)
class Group:
    """Locations (`indices` into the sweep's) that train in one batch, from `first_layer` and position `start` on."""

    stream: str
    width: int
    indices: tuple[int, ...]
    first_layer: int
    start: int
    bytes: int  # its estimated training memory


def first_positions(locations: list[Location], pairs: PromptPairs) -> list[int]:
    """Each location's first intervened position over every prompt of `pairs` (where its forwards start)."""
    masks = position_mask([loc.positions for loc in locations], pairs.width, pairs.named_positions, pairs.n_pairs)
    return [int(row.float().argmax()) if bool(row.any()) else 0 for row in masks.any(1)]


def training_bytes(cfg, batch: int, width: int, start: int, first_layer: int, vector_width: int, k: int, n_locations: int = 1) -> int:
    """The estimated memory of training `n_locations` locations together: forward and backward of `batch` prompts of
    `width` tokens each, from layer `first_layer` and position `start` on, with their parameters and Adam state."""
    layers = cfg.n_layers - first_layer
    per_layer_weights = 4 * cfg.d_model * cfg.n_heads * cfg.d_head + 3 * cfg.d_model * (cfg.d_mlp or 0)
    per_row = 10 * cfg.d_model + 4 * (cfg.d_mlp or 0) + 3 * cfg.n_heads * width
    per_prompt = layers * ((width - start) * per_row + width * 4 * cfg.n_heads * cfg.d_head) + 3 * cfg.d_vocab_out
    return _float_bytes(cfg) * (layers * per_layer_weights + n_locations * (batch * per_prompt + 6 * vector_width * k))


def eval_batch(cfg, n_locations: int, width: int, start: int, budget_bytes: int) -> int:
    """Test prompts per no-grad forward of `n_locations` locations within the budget (one layer's activations live at
    a time, the logits of the last position)."""
    per_row = 6 * cfg.d_model + 2 * (cfg.d_mlp or 0) + 3 * cfg.n_heads * width
    per_prompt = (width - start) * per_row + width * 4 * cfg.n_heads * cfg.d_head + 2 * cfg.d_vocab_out
    return max(1, min(MAX_EVAL_BATCH, budget_bytes // (n_locations * per_prompt * _float_bytes(cfg))))


def plan_groups(locations: list[Location], widths: list[int], starts: list[int], cfg, prompt_width: int, batch: int, k: int | None,
                budget_bytes: int, copies: int = 1) -> list[Group]:
    """Groups of locations of one (stream, width), streams in sweep order, each group within the budget unless it
    holds one location (`k`: the rotation's columns, None for a full rotation; `batch`: training prompts per step;
    `copies`: fits trained at each location together, the real one and its controls / hypotheses)."""
    groups: list[Group] = []
    keys = [(loc.stream, width) for loc, width in zip(locations, widths)]

    def group(stream: str, width: int, members: list[int]) -> Group:
        first, start = min(locations[j].layer for j in members), min(starts[j] for j in members)
        return Group(stream, width, tuple(members), first, start,
                     training_bytes(cfg, batch, prompt_width, start, first, width, k or width, len(members) * copies))

    for stream, width in dict.fromkeys(keys):
        members = sorted((i for i, key in enumerate(keys) if key == (stream, width)), key=lambda i: (locations[i].layer, starts[i], i))
        current: list[int] = []
        for i in members:
            if current and group(stream, width, current + [i]).bytes > budget_bytes:
                groups.append(group(stream, width, current))
                current = []
            current.append(i)
        groups.append(group(stream, width, current))
    return groups


def describe(groups: list[Group], budget_bytes: int) -> str:
    """One line for the log: how many groups, their sizes, the largest estimate, the budget."""
    sizes = sorted({len(g.indices) for g in groups})
    n = sum(len(g.indices) for g in groups)
    return (f"{n} location{'s train' if n != 1 else ' trains'} in {len(groups)} group{'s' if len(groups) != 1 else ''} of "
            f"{sizes[0] if len(sizes) == 1 else f'{sizes[0]}-{sizes[-1]}'} (memory_budget_mb={budget_bytes // 2**20}; "
            f"~{_mb(max(g.bytes for g in groups))} MB for the largest group)")


def over_budget(groups: list[Group], budget_bytes: int) -> str | None:
    """One line about the locations that alone exceed the budget (they train alone), or None."""
    over = [g for g in groups if g.bytes > budget_bytes]
    if not over:
        return None
    worst = max(over, key=lambda g: g.bytes)
    return (f"{len(over)} location{'s' if len(over) != 1 else ''} need more than memory_budget_mb={budget_bytes // 2**20} to train "
            f"alone (up to ~{_mb(worst.bytes)} MB, from layer {worst.first_layer}); each trains alone")


def _mb(n: int) -> int:
    return max(1, round(n / 2**20))


def _float_bytes(cfg) -> int:
    return torch.empty((), dtype=cfg.dtype).element_size()


class LocationBar:
    """A tqdm bar over locations that moves with every training step and test batch of a group (so that its ETA holds
    while one group trains for minutes), naming the group and its layers."""

    def __init__(self, total: int, desc: str, enabled: bool = True):
        self.bar = tqdm(total=total, desc=desc, disable=not enabled,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.1f}/{total} locations [{elapsed}<{remaining}{postfix}]")
        self.done, self.size, self.steps = 0, 0, 1

    def start_group(self, number: int, count: int, points: list[Location], steps: int) -> None:
        """Group `number` of `count` begins: `points`, in `steps` training steps and test batches."""
        self.size, self.steps = len(points), max(1, steps)
        layers = sorted({p.layer for p in points})
        where = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
        self.bar.set_postfix_str(f"group {number + 1}/{count}: {len(points)} {points[0].stream}, {where}")

    def step(self) -> None:
        self.bar.update(self.size / self.steps)

    def end_group(self) -> None:
        self.done += self.size
        self.bar.update(self.done - self.bar.n)

    def close(self) -> None:
        self.bar.close()
