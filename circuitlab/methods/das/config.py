"""Interchange interventions / DAS: its config schema (extends MethodConfig; method/das.yaml fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from circuitlab.config import MethodConfig


@dataclass
class DASTraining:
    """Interchange-intervention hyperparameters; the defaults are seed 000's (pyvene steps its LinearLR once per
    batch with total_iters = epochs, hence `lr_decay_steps`; `seed` is the notebook's 42). `featurizer`: rotation (DAS's
    learned subspace) or mask (intervention=das only: a learned binary-concrete mask over the stream's own dimensions,
    its logits at `boundary_lr`, its size penalised by `boundary_penalty`, its temperature annealed like Boundless
    DAS's; methods/das/mask.py)."""

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
    featurizer: str = "rotation"


@dataclass
class DASConfig(MethodConfig, DASTraining):
    """Interchange interventions (`intervention`: vanilla, das, boundless) trained on the task's train split and
    scored by IIA on its test split. `load`: a run dir (or its interventions.pt, its pyvene_interventions.pt or its
    mib/ export) whose learned interventions are evaluated without training. `controls`: fits beside the real one on the same pairs and locations, each a row
    with its name in the `control` column (random_subspace: an untrained random subspace of the same size;
    random_model: the same training on a randomly re-initialised copy of the model; shuffled_labels: the same
    training on counterfactual labels shuffled across pairs, scored against the shuffled test labels).
    `hypotheses`: candidate causal variables of the task, each a fit on the same pairs relabelled by it (rows with
    its name in the `hypothesis` column; hypotheses.csv: which one each location supports best). `export`: the learned
    interventions also in forms other tools read (mib: MIB's causal-variable featurizers under mib/; pyvene:
    pyvene_interventions.pt), each loadable back by `load`."""

    name: str = "das"
    load: Optional[str] = None
    controls: list[str] = field(default_factory=list)
    hypotheses: list[str] = field(default_factory=list)
    export: list[str] = field(default_factory=list)


def input_files(method) -> dict[str, Path]:
    """The files a run of this config reads besides the model and the task (digested into the run's inputs.json):
    `load`'s interventions.pt (a run dir given: the one it holds), its pyvene file, or every file of its MIB export."""
    if not method.get("load"):
        return {}
    load = Path(str(method.get("load"))).expanduser()
    root = next((d for d in (load, load / "mib") if (d / "circuitlab_mib.json").is_file()), None) if load.is_dir() else None
    if root is not None and not (load / "interventions.pt").is_file():  # a MIB export (mib/ or the run dir holding it): every file
        return {f"method.load:{p.relative_to(root)}": p for p in sorted(root.rglob("*")) if p.is_file()}
    return {"method.load": load / "interventions.pt" if load.is_dir() else load}
