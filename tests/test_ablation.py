"""Ablations with scales against a direct hook written here."""

from __future__ import annotations

import pytest
import torch

from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.methods.ablation import ablate, check_scales, corrupted_logit_diff
from circuitlab.metrics import logit_diff
from tests.conftest import ioi_pairs

LOCATIONS = [Location("z", 0, "all", (1,), "", 1), Location("z", 1, "all", (2,), "", 2), Location("mlp_out", 0, "all", None, "", None),
             Location("resid_pre", 1, 5, None, "", None)]


def by_hook(model, pairs, loc: Location, mode: str, scale: float) -> float:
    _, clean = model.run_with_cache(pairs.clean_tokens)
    _, corrupted = model.run_with_cache(pairs.corrupted_tokens)
    name = {"z": f"blocks.{loc.layer}.attn.hook_z", "mlp_out": f"blocks.{loc.layer}.hook_mlp_out",
            "resid_pre": f"blocks.{loc.layer}.hook_resid_pre"}[loc.stream]
    source = {"resample": corrupted[name], "mean": clean[name].mean(0, keepdim=True).expand_as(clean[name]),
              "zero": torch.zeros_like(clean[name])}[mode]

    def hook(act, hook):
        act = act.clone()
        positions = slice(None) if loc.positions == "all" else loc.positions
        if loc.heads is None:
            act[:, positions] = scale * source[:, positions]
        else:
            act[:, positions, loc.heads[0]] = scale * source[:, positions, loc.heads[0]]
        return act

    logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(name, hook)])
    final = logits[torch.arange(pairs.n_pairs), pairs.final_positions]
    return logit_diff(final, pairs.answer_tokens, pairs.wrong_tokens).mean().item()


@pytest.mark.parametrize("mode", ["resample", "mean", "zero"])
def test_ablation_equals_a_direct_hook(toy_model, mode):
    pairs = ioi_pairs(toy_model, n_prompts=10)
    scales = [0.0, 0.5, 3.0]
    results = ablate(toy_model, pairs, LOCATIONS, mode, scales, progress=False)
    for scale in scales:
        expected = [by_hook(toy_model, pairs, loc, mode, scale) for loc in LOCATIONS]
        torch.testing.assert_close(results[scale].logit_diff, torch.tensor(expected), atol=1e-4, rtol=1e-4)
    assert abs(corrupted_logit_diff(toy_model, pairs) - ablate(toy_model, pairs, LOCATIONS[:1], "resample", [1.0], progress=False)[1.0].corrupted_logit_diff) < 1e-5


def test_scales_must_be_numbers():
    assert check_scales([0, 1, 2.5]) == [0.0, 1.0, 2.5]
    for bad in (["a"], [True], []):
        with pytest.raises(ConfigError, match="method.scales"):
            check_scales(bad)
