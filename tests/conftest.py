"""Shared fixtures: the embedded toy model and small IOI prompt sets."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from circuitlab.config import IOITaskConfig, ModelConfig
from circuitlab.models import loading
from circuitlab.tasks import ioi

torch.set_grad_enabled(False)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` are skipped where CUDA is not visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def toy_model():
    return loading.load_model(ModelConfig(source="embedded", name="toy-ioi"), device="cpu")


def ioi_pairs(model, n_prompts=8, templates="when", seed=0, corruption="abc", split="test"):
    cfg = IOITaskConfig(n_prompts=n_prompts, templates=templates, corruption=corruption, split=split)
    bos = model.tokenizer.bos_token_id
    return ioi.build_pairs(cfg, model.tokenizer, [bos], bos, seed)


@pytest.fixture(scope="session")
def toy_pairs(toy_model):
    return ioi_pairs(toy_model)


def namespace(**kwargs):
    return SimpleNamespace(**kwargs)


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory):
    """A finished small run of every registered method, shared by the report tests (tests/report_pages.py)."""
    from tests.report_pages import build_runs

    return build_runs(tmp_path_factory.mktemp("reports"))
