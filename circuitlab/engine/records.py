"""The two records that pass between the generic planner, the methods and the run dir writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from circuitlab.locations import Location
from circuitlab.tasks.base import PromptPairs


@dataclass(frozen=True)
class Plan:
    """Everything decided before the weights are loaded. `method_plan` is the method's own part (path patching's
    receivers, DAS's train split), filled by its planning and read only by its runner."""

    shape: Any  # models.loading.ModelShape
    pairs: PromptPairs
    locations: list[Location]
    tracked: dict[str, int]
    tokenizer: object = None
    method_plan: Any = None


@dataclass
class MethodOutput:
    """What a method hands back for writing: tidy rows, tensors, extra CSV tables by file name, the
    unpatched baselines, extra manifest entries, .pt files, JSON files and text files by name."""

    rows: list[dict]
    tensors: dict
    clean: dict[str, float]
    corrupted: dict[str, float]
    tables: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    tensor_files: dict = field(default_factory=dict)
    json_files: dict = field(default_factory=dict)
    text_files: dict = field(default_factory=dict)
