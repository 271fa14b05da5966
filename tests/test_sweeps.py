"""Sweeps through `run_experiment`: head groups, computed cumulative order, metrics, tidy columns."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.locations import enumerate_locations
from circuitlab.engine.sweep import patch_sweep
from circuitlab.run import run_experiment

BASE = ["+experiment=ioi_patching", "task.n_prompts=8", "progress=false", "figures=false"]


def run(tmp_path, *overrides):
    run_experiment(cli.compose_config([*BASE, *overrides]), tmp_path)
    return pd.read_csv(tmp_path / "results.csv", keep_default_na=False)


def test_cumulative_in_computed_order(tmp_path):
    frame = run(tmp_path / "c", "sweep.streams=[z]", "sweep.layers=[1]", "sweep.positions=[all]", "sweep.heads=cumulative")
    singles = run(tmp_path / "s", "sweep.streams=[z]", "sweep.layers=[1]", "sweep.positions=[all]", "sweep.heads=each")
    raw = singles[singles.metric == "logit_diff"]
    ranked = raw.sort_values("value", ascending=False)["head"].astype(int).tolist()
    cumulative = frame[frame.metric == "logit_diff"]
    assert cumulative["head"].astype(int).tolist() == ranked
    assert (cumulative["group"] == "cumulative").all()
    assert sorted(cumulative["heads"].iloc[-1].split(",")) == ["0", "1", "2", "3"]  # in the order added
    # the first group is the best single head alone
    assert cumulative["value"].iloc[0] == pytest.approx(raw["value"].max(), abs=1e-5)


def test_leave_one_out_columns(tmp_path):
    frame = run(tmp_path, "sweep.streams=[z]", "sweep.layers=[0,1]", "sweep.positions=[all]", "sweep.heads=leave_one_out")
    rows = frame[(frame.metric == "logit_diff") & (frame.layer == 1)]
    assert rows["head"].astype(int).tolist() == [0, 1, 2, 3]
    assert rows["heads"].tolist() == ["1,2,3", "0,2,3", "0,1,3", "0,1,2"]


def test_head_result_equals_z_patch(toy_model, toy_pairs):
    """Patching one head's output (result = z W_O) is the same intervention as patching its z."""
    kwargs = dict(heads="each", shape=toy_model.cfg)
    z = patch_sweep(toy_model, toy_pairs, enumerate_locations(["z"], [0, 1], ["all"], **kwargs), progress=False)
    result = patch_sweep(toy_model, toy_pairs, enumerate_locations(["head_result"], [0, 1], ["all"], **kwargs), progress=False)
    torch.testing.assert_close(z.logit_diff, result.logit_diff, atol=1e-4, rtol=0)
    assert not toy_model.cfg.use_attn_result, "use_attn_result is restored"


def test_metrics_match_direct_computation(toy_model, toy_pairs):
    """accuracy, KL from the clean run and tracked-token probability at (attn_out, layer 1, END)."""
    mary = toy_model.tokenizer(" Mary", add_special_tokens=False)["input_ids"][0]
    (location,) = enumerate_locations(["attn_out"], [1], ["END"])
    ours = patch_sweep(toy_model, toy_pairs, [location], metrics=("accuracy", "kl", "prob"), tracked={"Mary": mary}, progress=False)
    rows = torch.arange(toy_pairs.n_pairs)
    end = toy_pairs.final_positions
    clean_logits, clean_cache = toy_model.run_with_cache(toy_pairs.clean_tokens)

    def hook(act, hook):
        act = act.clone()
        act[rows, end] = clean_cache[hook.name][rows, end]
        return act

    patched = toy_model.run_with_hooks(toy_pairs.corrupted_tokens, fwd_hooks=[(location.hook_name, hook)])[rows, end]
    clean = torch.log_softmax(clean_logits[rows, end], -1)
    log_probs = torch.log_softmax(patched, -1)
    assert ours.metrics["accuracy"].item() == pytest.approx((patched.argmax(-1) == toy_pairs.answer_tokens).float().mean().item())
    kl = torch.nn.functional.kl_div(log_probs, clean, log_target=True, reduction="none").sum(-1).mean()
    assert ours.metrics["kl"].item() == pytest.approx(kl.item(), abs=1e-4)
    assert ours.metrics["prob:Mary"].item() == pytest.approx(log_probs[:, mary].exp().mean().item(), abs=1e-5)
    assert ours.clean["kl"] == pytest.approx(0.0, abs=1e-6) and ours.clean["accuracy"] == 1.0


def test_tracked_probabilities_in_results(tmp_path):
    frame = run(tmp_path, "sweep.streams=[resid_pre]", "method.metrics=[logit_diff,prob,kl,accuracy]", "task.track=[' Mary',' John']")
    assert {"prob:Mary", "prob:John", "kl", "accuracy", "logit_diff_normalized"} <= set(frame.metric)
