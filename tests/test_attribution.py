"""Attribution patching equals gradient x activation difference computed by hand, and runs end to end."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.locations import enumerate_locations
from circuitlab.methods.attribution_patching.compute import attribute
from circuitlab.metrics import logit_diff
from circuitlab.run import run_experiment


def hand_attribution(model, pairs, hook_name, select):
    """d metric / d activation on the corrupted run, by torch.autograd.grad, dotted with (clean - corrupted)
    over the cells `select(tensor)` keeps."""
    _, clean_cache = model.run_with_cache(pairs.clean_tokens, names_filter=hook_name)
    stash = {}

    def grab(act, hook):
        act = act.detach().requires_grad_(True)
        stash["act"] = act
        return act

    rows = torch.arange(pairs.n_pairs)
    with torch.enable_grad():
        logits = model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(hook_name, grab)])
        metric = logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
        (grad,) = torch.autograd.grad(metric, stash["act"])
    return float(select((clean_cache[hook_name] - stash["act"].detach()) * grad).sum())


@pytest.mark.parametrize("budget", [None, 1])
def test_resid_and_head_attribution(toy_model, toy_pairs, budget):
    """Against autograd on one whole forward; with a 1 MB budget the prompts go through in batches of one (the same
    sums, in parts)."""
    from circuitlab.engine.batching import backward_batch

    assert (backward_batch(toy_model, toy_pairs.width, budget) >= toy_pairs.n_pairs) is (budget is None)
    s2 = int(toy_pairs.named_positions["S2"][0])
    locations = enumerate_locations(["resid_pre"], [1], [s2]) + enumerate_locations(["z"], [1], ["all"], heads=[[2]], shape=toy_model.cfg)
    ours, clean, corrupted = attribute(toy_model, toy_pairs, locations, memory_budget_mb=budget)
    assert ours[0].item() == pytest.approx(hand_attribution(toy_model, toy_pairs, "blocks.1.hook_resid_pre", lambda t: t[:, s2]), abs=1e-4)
    assert ours[1].item() == pytest.approx(hand_attribution(toy_model, toy_pairs, "blocks.1.attn.hook_z", lambda t: t[:, :, 2]), abs=1e-4)
    assert clean > corrupted
    assert not any(p.requires_grad for p in toy_model.parameters()), "the model stays frozen"


def test_attribution_run_writes_correlation(tmp_path):
    cfg = cli.compose_config(["+experiment=ioi_attribution", "task.n_prompts=8", "progress=false"])
    manifest = run_experiment(cfg, tmp_path)
    frame = pd.read_csv(tmp_path / "results.csv")
    assert {"attribution", "attribution_normalized", "exact_change", "exact_normalized"} <= set(frame.metric)
    correlation = json.loads((tmp_path / "manifest.json").read_text())["correlation_with_exact"]
    assert set(correlation) == {"resid_pre", "attn_out", "mlp_out", "all"}
    assert -1 <= correlation["all"] <= 1 and manifest["correlation_with_exact"] == correlation
    assert (tmp_path / "figures" / "attribution_vs_exact.png").is_file()
