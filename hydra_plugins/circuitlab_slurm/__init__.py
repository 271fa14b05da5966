"""circuitlab's Slurm launcher for Hydra (`hydra/launcher=slurm`, configs/hydra/launcher/slurm.yaml): submitit's Slurm
launcher, with circuitlab's launch (`circuitlab/slurm.py`: arrays cut to MaxArraySize, sbatch's refusals in one line,
squeue instead of sacct, `wait: false`) and two more fields: `gpus_per_node: auto` and `wait`. Hydra loads launchers
from its `hydra_plugins` package only, hence this module; it imports nothing heavy (Hydra scans it at every start)."""

from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

try:
    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
except ImportError:  # the submitit plugin is not installed: `circuitlab run` refuses hydra/launcher=slurm in one line
    SlurmLauncher = None

if SlurmLauncher is not None:

    class CircuitlabSlurmLauncher(SlurmLauncher):
        def __init__(self, **params: Any) -> None:
            super().__init__(**params)

        def launch(self, job_overrides, initial_job_idx):
            from circuitlab.slurm_launch import launch

            return launch(self, job_overrides, initial_job_idx)

    @dataclass
    class CircuitlabSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.circuitlab_slurm.CircuitlabSlurmLauncher"
        gpus_per_node: Any = "auto"  # auto: 1 where the partition has GPUs and device is not cpu, else none; or a number, or null
        wait: bool = True  # false: submit, print where to follow the sweep, and return

    ConfigStore.instance().store(group="hydra/launcher", name="circuitlab_slurm", node=CircuitlabSlurmConf(), provider="circuitlab")
