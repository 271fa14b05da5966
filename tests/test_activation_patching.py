"""Activation patching equals TransformerLens' own `patching` functions and a direct hook."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from circuitlab.locations import enumerate_locations
from circuitlab.engine.sweep import patch_sweep
from circuitlab.metrics import logit_diff
from tests.conftest import ioi_pairs

TL_FUNCTIONS = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "resid_mid": patching.get_act_patch_resid_mid,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
}


def tl_metric(pairs):
    def metric(logits):
        return logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()

    return metric


@pytest.mark.parametrize("stream", list(TL_FUNCTIONS))
@pytest.mark.parametrize("budget_mb", [1024, 1])
def test_matches_transformer_lens(toy_model, toy_pairs, stream, budget_mb):
    n_layers, width = toy_model.cfg.n_layers, toy_pairs.width
    locations = enumerate_locations([stream], list(range(n_layers)), list(range(width)))
    ours = patch_sweep(toy_model, toy_pairs, locations, memory_budget_mb=budget_mb, progress=False)
    _, clean_cache = toy_model.run_with_cache(toy_pairs.clean_tokens)
    theirs = TL_FUNCTIONS[stream](toy_model, toy_pairs.corrupted_tokens, clean_cache, tl_metric(toy_pairs))
    torch.testing.assert_close(ours.logit_diff.view(n_layers, width), theirs.float(), atol=1e-4, rtol=0)
    assert theirs.abs().max() > 0.1, "the sweep should move the metric somewhere"


def test_noising_matches_direct_hook(toy_model, toy_pairs):
    """Noising at (resid_post, layer 0, S2): run clean, overwrite S2 with the corrupted activation."""
    (location,) = enumerate_locations(["resid_post"], [0], ["S2"])
    ours = patch_sweep(toy_model, toy_pairs, [location], direction="noising", progress=False)
    _, corrupted_cache = toy_model.run_with_cache(toy_pairs.corrupted_tokens)
    s2 = toy_pairs.named_positions["S2"]
    rows = torch.arange(toy_pairs.n_pairs)

    def hook(act, hook):
        act = act.clone()
        act[rows, s2] = corrupted_cache[hook.name][rows, s2]
        return act

    logits = toy_model.run_with_hooks(toy_pairs.clean_tokens, fwd_hooks=[(location.hook_name, hook)])
    expected = logit_diff(logits[rows, toy_pairs.final_positions], toy_pairs.answer_tokens, toy_pairs.wrong_tokens)
    assert ours.logit_diff.item() == pytest.approx(expected.mean().item(), abs=1e-4)


def test_named_positions_across_lengths(toy_model):
    """Prompts of different lengths (all templates), patched at END by name, equal a per-prompt direct hook."""
    pairs = ioi_pairs(toy_model, n_prompts=12, templates="all", split="all")
    assert not pairs.same_length
    locations = enumerate_locations(["attn_out", "resid_pre"], [1], ["END", "all"])
    ours = patch_sweep(toy_model, pairs, locations, progress=False)
    rows = torch.arange(pairs.n_pairs)
    _, clean_cache = toy_model.run_with_cache(pairs.clean_tokens)
    for location, value in zip(locations, ours.logit_diff):
        def hook(act, hook, spec=location.positions):
            act = act.clone()
            if spec == "all":
                act[:] = clean_cache[hook.name]
            else:
                cells = pairs.named_positions[spec]
                act[rows, cells] = clean_cache[hook.name][rows, cells]
            return act

        logits = toy_model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(location.hook_name, hook)])
        expected = logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
        assert value.item() == pytest.approx(expected.item(), abs=1e-4)
    # patching the whole residual stream entering layer 1 restores the clean run exactly
    assert ours.normalized[locations.index(enumerate_locations(["resid_pre"], [1], ["all"])[0])].item() == pytest.approx(1.0, abs=1e-4)
