"""Edge pruning (circuitlab/methods/edge_pruning/): its differentiable masked forward against plain references
(tests/edge_reference.py: exact edge patches, EAP as the mask's gradient), its mask samplers, the known circuit
(AUROC 1.0, faithfulness 1.0), resume by epochs after a SIGKILL, and bad settings refused in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from circuitlab import cli
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.metrics import logit_diff
from circuitlab.methods.edge_pruning.forward import masked_logits
from circuitlab.methods.edge_pruning import train
from circuitlab.methods.edge_pruning.masks import BETA, LEFT, RIGHT, EdgeMasks, sparsity_penalty
from circuitlab.models.known_circuit import CIRCUIT_EDGES
from tests import edge_reference
from tests.cli_refusal import refused
from tests.test_edges import random_model, random_pairs

ATOL = 1e-4
KNOWN = ["+experiment=known_circuit_eap", "method=edge_pruning", "task.n_prompts=16", "figures=false", "progress=false"]


@pytest.fixture(scope="module", params=["gpt2_like", "grouped_query"])
def model(request):
    if request.param == "gpt2_like":
        return random_model()
    return random_model(n_key_value_heads=2, normalization_type="RMS", positional_embedding_type="rotary", act_fn="silu", gated_mlp=True)


def _mean_ld(model, graph, pairs, mask, counterfactual="patching"):
    sources = cf.prepare(model, pairs, graph, counterfactual, pairs.n_pairs)
    source = sources.outputs(model, pairs, graph)
    logits = masked_logits(model, graph, pairs.clean_tokens, source, mask, pairs.final_positions)
    return logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean()


def _plain_ld(model, pairs, tokens) -> float:
    logits = model(tokens)[torch.arange(pairs.n_pairs), pairs.final_positions]
    return logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean().item()


def test_full_empty_and_single_edge_masks_are_the_clean_corrupted_and_patched_runs(model):
    """Mask 1 everywhere: the clean run; 0 everywhere: the corrupted one; 0 on one edge alone: that edge's exact
    patch (edge_reference.patch_edge: two plain forwards with TransformerLens' own split-input hooks)."""
    pairs, graph = random_pairs(), EdgeGraph.of(model.cfg)
    ones = graph.real.float().expand(pairs.n_pairs, -1, -1)
    with torch.no_grad():
        assert float(_mean_ld(model, graph, pairs, ones)) == pytest.approx(_plain_ld(model, pairs, pairs.clean_tokens), abs=ATOL)
        assert float(_mean_ld(model, graph, pairs, torch.zeros_like(ones))) == pytest.approx(_plain_ld(model, pairs, pairs.corrupted_tokens), abs=ATOL)
        for name in ("input->a0.h1<q>", "a0.h2->a2.h3<k>", "m1->a2.h0<v>", "a1.h1->m1", "m0->m2", "a2.h3->logits"):
            s, r = graph.parse_edge(name, "edge")
            mask = ones.clone()
            mask[:, s, r] = 0
            assert float(_mean_ld(model, graph, pairs, mask)) == pytest.approx(edge_reference.patch_edge(model, pairs, name), abs=ATOL), name


@pytest.mark.parametrize("counterfactual", ["mean", "zero"])
def test_single_edge_masks_under_mean_and_zero_are_the_exact_patches(model, counterfactual):
    pairs, graph = random_pairs(), EdgeGraph.of(model.cfg)
    ones = graph.real.float().expand(pairs.n_pairs, -1, -1)
    with torch.no_grad():
        for name in ("input->a1.h1<v>", "a0.h2->m2", "m1->logits"):
            s, r = graph.parse_edge(name, "edge")
            mask = ones.clone()
            mask[:, s, r] = 0
            assert float(_mean_ld(model, graph, pairs, mask, counterfactual)) == pytest.approx(
                edge_reference.patch_edge(model, pairs, name, counterfactual), abs=ATOL), name


def test_the_masks_gradient_at_the_clean_run_is_eap(model):
    """d(mean logit difference) / d(mask of edge s->r) at mask 1 is -grad_r . (source_s - clean_s): EAP's score, from
    edge_reference.attribution (one clean backward, edge by edge in Python)."""
    pairs, graph = random_pairs(), EdgeGraph.of(model.cfg)
    mask = graph.real.float().expand(pairs.n_pairs, -1, -1).clone().requires_grad_(True)
    with torch.enable_grad():  # conftest turns gradients off
        _mean_ld(model, graph, pairs, mask).backward()
    gradient = mask.grad.sum(0)
    names = ["input->a0.h0<q>", "input->m0", "a0.h3->a1.h2<v>", "m0->a2.h1<k>", "a1.h0->logits", "m2->logits"]
    expected = edge_reference.attribution(model, pairs, names)
    for name, value in zip(names, expected):
        assert float(gradient[graph.parse_edge(name, "edge")]) == pytest.approx(value, abs=ATOL), name


@pytest.mark.parametrize("sampler", ["hard_concrete", "ugs"])
def test_samples_lie_in_0_1_with_the_learned_keep_probability(sampler):
    """Over many samples, the share of hard concrete masks above 0 is P(z > 0) (Louizos' L0), and the mean of a UGS
    mask is p = sigmoid(theta); both reach exact 0 and 1; no mask on what is no edge."""
    graph = EdgeGraph(2, 2)
    masks = EdgeMasks(graph.real, sampler)
    with torch.no_grad():
        masks.logits.copy_(torch.linspace(-3, 3, graph.real.numel()).view_as(masks.logits))
    sample = masks.sample(20000, torch.Generator().manual_seed(0)).detach()
    assert sample.min() == 0 and sample.max() == 1 and (sample[:, ~graph.real] == 0).all()
    seen = (sample > 0).float().mean(0) if sampler == "hard_concrete" else sample.mean(0)
    assert torch.allclose(seen[graph.real], masks.keep_probability().detach()[graph.real], atol=0.02)
    assert torch.allclose(masks.scores()[graph.real].float(), masks.keep_probability().detach()[graph.real])


@pytest.mark.parametrize("sampler", ["hard_concrete", "ugs"])
@pytest.mark.parametrize("senders, receivers", [(2, 2), (6, 4)])
def test_the_penalty_pulls_each_mask_by_lambda_over_sqrt_edges(sampler, senders, receivers):
    """sqrt(n) (l1 gap + l2 gap^2), gap = 1 - mean keep probability - target: each mask's gradient is
    -(l1 + 2 l2 gap) p (1 - p) / sqrt(n) (written out here), so a graph of 100x the edges feels 1/10 the pull."""
    graph = EdgeGraph(senders, receivers)
    masks = EdgeMasks(graph.real, sampler)
    with torch.no_grad():
        masks.logits.copy_(torch.linspace(-2, 4, graph.real.numel()).view_as(masks.logits))
    lambdas, target = torch.tensor([-1.5, 2.0]), 0.3
    with torch.enable_grad():
        penalty = sparsity_penalty(masks, lambdas, target)
        penalty.backward()
    shift = BETA * torch.log(torch.tensor(-LEFT / RIGHT)) if sampler == "hard_concrete" else 0.0
    p = torch.sigmoid(masks.logits.detach() - shift)
    n = int(graph.real.sum())
    gap = 1 - float(p[graph.real].sum()) / n - target
    assert float(penalty) == pytest.approx(n**0.5 * (-1.5 * gap + 2.0 * gap**2), rel=1e-5)
    expected = -(-1.5 + 2 * 2.0 * gap) * p * (1 - p) / n**0.5 * graph.real
    assert torch.allclose(masks.logits.grad, expected, atol=1e-7)


def test_cached_clean_logits_and_sources_train_as_remade_ones(monkeypatch):
    """The clean logits and corrupted senders' outputs kept across epochs give the masks of a training that remakes
    them every step (train.CACHE_MB = 0)."""
    model = random_model()
    pairs, graph = random_pairs(), EdgeGraph.of(model.cfg)
    m = OmegaConf.create(dict(sampler="hard_concrete", loss="kl", epochs=3, lr=0.1, lambda_lr=0.05, target_sparsity=0.5,
                              sparsity_warmup=0.5, seed=0, counterfactual="patching"))
    cached, _ = train.train_masks(model, pairs, graph, m, 2, False, None)
    monkeypatch.setattr(train, "CACHE_MB", 0)
    remade, _ = train.train_masks(model, pairs, graph, m, 2, False, None)
    assert torch.allclose(cached.scores(), remade.scores(), atol=1e-5)
    assert not torch.equal(cached.scores(), EdgeMasks(graph.real, "hard_concrete").scores())  # it trained


def _run(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "run"
    cli.main(["run", *KNOWN, *overrides, f"run.dir={out}"])
    return out


@pytest.mark.parametrize("sampler", ["hard_concrete", "ugs"])
def test_known_circuit_found_with_auroc_and_faithfulness_1(sampler, tmp_path):
    out = _run(tmp_path, f"method.sampler={sampler}", "method.epochs=30")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["auroc"] == 1.0 and manifest["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    edges = pd.read_csv(out / "edges.csv")
    assert set(edges["edge"][:3]) == set(CIRCUIT_EDGES["patching"]) == set(edges[edges["in_circuit"]]["edge"])
    assert edges["score"].between(0, 1).all()
    record = manifest["edge_pruning"]
    assert len(record["history"]) == 30 and record["history"][-1]["density"] < record["history"][0]["density"]


def _cli(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "circuitlab.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_sigkill_after_an_epoch_then_resume_equals_uninterrupted(tmp_path, capsys):
    args = ["run", *KNOWN, "method.epochs=6"]
    killed = _cli([*args, "run.dir=crash"], tmp_path, {"CIRCUITLAB_KILL_AFTER_EPOCHS": "2"})
    assert killed.returncode == -9, killed.stderr
    assert (tmp_path / "crash" / "chunks" / "edge_pruning.state").is_file() and not (tmp_path / "crash" / "edges.csv").exists()
    cli.main([*args, f"run.dir={tmp_path / 'crash'}"])
    cli.main([*args, f"run.dir={tmp_path / 'whole'}"])
    resumed = json.loads((tmp_path / "crash" / "manifest.json").read_text())["edge_pruning"]
    assert resumed["resumed_at_epoch"] == 2 and len(resumed["history"]) == 6
    crash, whole = (pd.read_csv(tmp_path / d / "edges.csv") for d in ("crash", "whole"))
    assert crash["edge"].tolist() == whole["edge"].tolist() and crash["score"].tolist() == whole["score"].tolist()
    capsys.readouterr()
    err = refused([*args, "method.lr=0.2", f"run.dir={tmp_path / 'crash'}"], capsys)  # another config: not resumed
    assert "method.lr=0.1 there, 0.2 here" in err


@pytest.mark.parametrize("override, field", [
    ("method.epochs=0", "method.epochs"), ("method.lr=0", "method.lr"), ("method.lr=nan", "method.lr"),
    ("method.target_sparsity=1", "method.target_sparsity"), ("method.sparsity_warmup=1.5", "method.sparsity_warmup"),
    ("method.lambda_lr=-1", "method.lambda_lr"), ("method.sampler=bernoulli", "method.sampler"), ("method.loss=mse", "method.loss"),
    ("method.seed=-1", "method.seed"), ("method.batch_size=0", "method.batch_size"),
])
def test_bad_settings_refused_in_one_line(override, field, tmp_path, capsys):
    err = refused(["run", *KNOWN, override, f"run.dir={tmp_path / 'x'}"], capsys)
    assert field in err and not (tmp_path / "x").exists()
