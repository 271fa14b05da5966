"""GPU-only checks (marker `gpu`, skipped without CUDA): the same numbers on CUDA as on the CPU, bfloat16 runs,
and the local_gpus launcher's GPU claim."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.devices import claimed_gpu
from circuitlab.run import run_experiment

pytestmark = pytest.mark.gpu
QUIET = ["progress=false", "figures=false", "+experiment=ioi_heads"]


def values(run_dir: Path) -> pd.Series:
    return pd.read_csv(run_dir / "results.csv")["value"]


def test_cuda_matches_cpu(tmp_path):
    run_experiment(cli.compose_config([*QUIET, "device=cpu"]), tmp_path / "cpu")
    run_experiment(cli.compose_config([*QUIET, "device=cuda"]), tmp_path / "cuda")
    assert (values(tmp_path / "cpu") - values(tmp_path / "cuda")).abs().max() < 1e-3


def test_bfloat16_on_cuda_is_close_to_float32(tmp_path):
    run_experiment(cli.compose_config([*QUIET, "device=cuda"]), tmp_path / "fp32")
    manifest = run_experiment(cli.compose_config([*QUIET, "device=cuda", "model.dtype=bfloat16"]), tmp_path / "bf16")
    assert manifest["device"].startswith("cuda")
    assert (values(tmp_path / "fp32") - values(tmp_path / "bf16")).abs().max() < 0.25


def test_local_gpus_claims_distinct_devices(tmp_path):
    with claimed_gpu(tmp_path) as first:
        assert first == "cuda:0"
        if torch.cuda.device_count() > 1:
            with claimed_gpu(tmp_path) as second:
                assert second == "cuda:1"


@pytest.mark.parametrize("method", ["eap", "eap_ig", "edge_patching"])
def test_edge_methods_on_cuda_match_cpu(tmp_path, method):
    runs = {}
    for device in ("cpu", "cuda"):
        overrides = ["+experiment=ioi_eap", f"method={method}", "task.n_prompts=16", "progress=false", "figures=false", f"device={device}"]
        run_experiment(cli.compose_config(overrides), tmp_path / device)
        runs[device] = pd.read_csv(tmp_path / device / "edges.csv").set_index("edge")["score"]
    assert (runs["cpu"] - runs["cuda"].reindex(runs["cpu"].index)).abs().max() < 1e-3
    assert (tmp_path / "cuda" / "circuit.json").is_file()
