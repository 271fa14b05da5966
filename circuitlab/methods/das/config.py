"""Interchange interventions / DAS: its config schema (extends MethodConfig; method/das.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from circuitlab.config import MethodConfig


@dataclass
class DASTraining:
    """Interchange-intervention hyperparameters; the defaults are seed 000's (pyvene steps its LinearLR once per
    batch with total_iters = epochs, hence `lr_decay_steps`; `seed` is the notebook's 42)."""

    intervention: str = "das"
    low_rank_dimension: int = 1
    batch_size: int = 20
    epochs: int = 10
    lr: float = 0.01
    lr_end_factor: float = 0.1
    lr_decay_steps: int = 10
    boundary_lr: float = 0.5
    boundary_penalty: float = 2.0
    temperature_start: float = 50.0
    temperature_end: float = 0.1
    seed: int = 42


@dataclass
class DASConfig(MethodConfig, DASTraining):
    """Interchange interventions (`intervention`: vanilla, das, boundless) trained on the task's train split and
    scored by IIA on its test split. `load`: a run dir (or its interventions.pt) whose learned interventions are
    evaluated without training."""

    name: str = "das"
    load: Optional[str] = None


def input_files(method) -> dict[str, Path]:
    """The file a run of this config reads besides the model and the task (digested into the run's inputs.json):
    `load`'s interventions.pt (a run dir given: the one it holds)."""
    if not method.get("load"):
        return {}
    load = Path(str(method.get("load"))).expanduser()
    return {"method.load": load / "interventions.pt" if load.is_dir() else load}
