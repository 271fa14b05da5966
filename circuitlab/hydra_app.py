"""The @hydra.main entry point behind `circuitlab run`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict

from circuitlab.compose import CONFIG_DIR, register_configs
from circuitlab.errors import EXIT_USAGE, CircuitlabError

register_configs()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from circuitlab.devices import claimed_gpu
    from circuitlab.results import write_sweep_index
    from circuitlab.run import run_experiment
    from circuitlab.slurm import in_job as in_slurm_job

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    one_gpu_per_job = hydra_cfg.runtime.choices.get("hydra/launcher") == "local_gpus"
    try:
        with claimed_gpu(Path(hydra_cfg.sweep.dir), enabled=multirun and one_gpu_per_job and cfg.device in ("auto", "cuda")) as gpu:
            if gpu is not None:
                with open_dict(cfg):
                    cfg.device = gpu
            with in_slurm_job():  # SIGTERM from Slurm ends the run in its one line, written to the job's log
                run_experiment(cfg, Path(hydra_cfg.runtime.output_dir), overrides=list(hydra_cfg.overrides.task))
    except CircuitlabError as err:
        print(f"circuitlab: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
    finally:
        if multirun:  # the jobs not started yet listed too (an interrupted sweep's index says what never ran)
            from circuitlab.multirun import planned_jobs

            write_sweep_index(Path(hydra_cfg.sweep.dir), planned_jobs(Path(hydra_cfg.sweep.dir)))
            from circuitlab.report import write_index_quietly

            write_index_quietly(Path(hydra_cfg.sweep.dir))
