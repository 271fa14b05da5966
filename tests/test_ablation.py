"""Ablations with scales against a direct hook written here."""

from __future__ import annotations

import pytest
import torch

from circuitlab.errors import ConfigError
from circuitlab.locations import Location
from circuitlab.methods.ablation.compute import PCA_MODES, ablate, check_pca, check_scales, corrupted_logit_diff, fit_components, make_transform
from circuitlab.metrics import logit_diff, output_changed
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


# --- PCA modes ---------------------------------------------------------------------------------------------

def projector_by_covariance(samples: torch.Tensor, k: int) -> torch.Tensor:
    """P onto the top-k eigenvectors of the covariance (an independent route to the principal subspace)."""
    centred = samples.double() - samples.double().mean(0)
    _, vectors = torch.linalg.eigh(centred.T @ centred)
    top = vectors[:, -k:]
    return (top @ top.T).float()


@pytest.mark.parametrize("mode", PCA_MODES)
def test_each_pca_mode_changes_only_its_subspace(toy_model, mode):
    """Hooked value minus clean value lies entirely in the top-k subspace (top modes) or in its orthogonal complement
    (orthogonal modes), equals scale x source there minus the clean part, and the model run equals a direct hook
    whose projector comes from the covariance's eigenvectors."""
    pairs = ioi_pairs(toy_model, n_prompts=12)
    k, scale, head = 3, 2.5, 1
    assert pairs.same_length
    position = pairs.width - 1  # after the prompts differ, so clean and corrupted values differ
    loc = Location("z", 1, position, (head,), "", head)
    name = loc.hook_name
    _, clean = toy_model.run_with_cache(pairs.clean_tokens, names_filter=name)
    _, corrupted = toy_model.run_with_cache(pairs.corrupted_tokens, names_filter=name)
    x, y = clean[name][:, position, head], corrupted[name][:, position, head]
    assert (x - y).abs().max() > 0.1
    source = x if "_self_" in mode else y
    P = projector_by_covariance(torch.cat([x, y]), k)
    eye = torch.eye(P.shape[0])
    keep, ablated = (eye - P, P) if mode.endswith("_top") else (P, eye - P)

    clean_acts, components = fit_components(toy_model, pairs, [loc], mode, k)
    transform = make_transform(mode, scale, clean_acts, components)
    out = transform((clean if "_self_" in mode else corrupted)[name], name)[:, position, head]
    change = out - x
    torch.testing.assert_close(change @ keep.T, torch.zeros_like(change), atol=1e-4, rtol=0)
    torch.testing.assert_close(out @ ablated.T, scale * source @ ablated.T, atol=1e-4, rtol=1e-4)

    expected_value = (x @ keep.T) + scale * (source @ ablated.T)

    def hook(act, hook):
        act = act.clone()
        act[:, position, head] = expected_value
        return act

    logits = toy_model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(name, hook)])
    expected = logit_diff(logits[torch.arange(pairs.n_pairs), pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
    got = ablate(toy_model, pairs, [loc], mode, [scale], progress=False, k=k)[scale].logit_diff[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_pca_k_must_fit_the_node(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=4)
    with pytest.raises(ConfigError, match="method.k=17"):
        ablate(toy_model, pairs, [Location("z", 0, "all", (0,), "", 0)], "pca_self_top", [0.0], progress=False, k=17)
    with pytest.raises(ConfigError, match="method.k=0"):
        check_pca("pca_resample_top", 0, [], {})


def test_output_change_counts_only_pairs_whose_labels_differ():
    clean = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    patched = torch.tensor([[[0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [0.0, 2.0]]])
    differ = torch.tensor([True, True, False, True])
    assert output_changed(patched, clean, differ).item() == pytest.approx(2 / 3)
    numeric_clean = torch.tensor([[1.0], [2.0], [3.0]])
    numeric = torch.tensor([[1.0005], [2.5], [3.0]])
    assert output_changed(numeric, numeric_clean, torch.ones(3, dtype=torch.bool), atol=1e-3).item() == pytest.approx(1 / 3)
