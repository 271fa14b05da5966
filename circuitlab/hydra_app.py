"""The @hydra.main entry point behind `circuitlab run`."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from circuitlab.cli import CONFIG_DIR
from circuitlab.config import register_configs
from circuitlab.errors import EXIT_USAGE, CircuitlabError

register_configs()


@hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from circuitlab.run import run_experiment

    try:
        run_experiment(cfg, Path(HydraConfig.get().runtime.output_dir))
    except CircuitlabError as err:
        print(f"circuitlab: error: {err}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE) from None
