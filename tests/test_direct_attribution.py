"""Logit lens and direct logit attribution against TransformerLens' own cache decompositions."""

from __future__ import annotations

import pytest
import torch

from circuitlab.methods.direct_attribution.compute import HEAD_COMPONENTS, LAYER_COMPONENTS, direct_attribution
from tests.conftest import ioi_pairs


@pytest.fixture(scope="module")
def result_and_reference(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=24, templates="when")  # one template: the final position is -1
    result = direct_attribution(toy_model, pairs)
    _, cache = toy_model.run_with_cache(pairs.clean_tokens)
    direction = (toy_model.W_U[:, pairs.answer_tokens] - toy_model.W_U[:, pairs.wrong_tokens]).T
    return pairs, result, cache, direction


def test_per_layer_decomposition_sums_to_the_logit_difference(result_and_reference):
    _, result, _, _ = result_and_reference
    assert result.decomposition_error < 1e-4
    layers = {c[1] for c in result.components}
    for layer in layers:
        attn = [v for name, l, _, v in result.components if l == layer and name == "attn_out"]
        parts = [v for name, l, _, v in result.components if l == layer and name in HEAD_COMPONENTS]
        assert abs(sum(parts) - attn[0]) < 1e-4  # heads + output bias = the attention layer's contribution


def test_matches_transformer_lens_decompositions(result_and_reference):
    pairs, result, cache, direction = result_and_reference
    layers, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    theirs = (cache.apply_ln_to_stack(layers, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1)
    ours = [v for name, _, _, v in result.components if name in LAYER_COMPONENTS]
    torch.testing.assert_close(torch.tensor(ours), theirs, atol=1e-4, rtol=1e-4)
    heads, _ = cache.stack_head_results(layer=-1, pos_slice=-1, return_labels=True)
    theirs_heads = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1)
    ours_heads = [v for name, _, _, v in result.components if name == "head"]
    torch.testing.assert_close(torch.tensor(ours_heads), theirs_heads, atol=1e-4, rtol=1e-4)
    lens, _ = cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1, return_labels=True)
    theirs_lens = (cache.apply_ln_to_stack(lens, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1) + result.constant
    torch.testing.assert_close(torch.tensor([v for _, _, v in result.lens]), theirs_lens, atol=1e-4, rtol=1e-4)
    assert abs(result.lens[-1][2] - result.logit_diff) < 1e-4


def test_ragged_prompts_read_each_final_position(toy_model):
    pairs = ioi_pairs(toy_model, n_prompts=24, templates="all", split="all")
    assert not pairs.same_length
    result = direct_attribution(toy_model, pairs, prompts="corrupted")
    assert result.decomposition_error < 1e-4 and abs(result.lens[-1][2] - result.logit_diff) < 1e-4
