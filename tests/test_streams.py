"""Every stream x {layer, head, position} combination equals a direct hook written here, and TransformerLens'
`patching` functions where it has one."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from circuitlab.locations import enumerate_locations, stream_names
from circuitlab.engine.sweep import patch_sweep
from circuitlab.metrics import logit_diff
from tests.conftest import ioi_pairs

# (hook template, position axis, head axis) as TransformerLens lays out each activation; written out here
# rather than read from circuitlab so that the test checks the library's own table.
HOOKS = {
    "resid_pre": ("blocks.{}.hook_resid_pre", 1, None),
    "resid_mid": ("blocks.{}.hook_resid_mid", 1, None),
    "resid_post": ("blocks.{}.hook_resid_post", 1, None),
    "attn_in": ("blocks.{}.ln1.hook_normalized", 1, None),
    "q": ("blocks.{}.attn.hook_q", 1, 2),
    "k": ("blocks.{}.attn.hook_k", 1, 2),
    "v": ("blocks.{}.attn.hook_v", 1, 2),
    "pattern": ("blocks.{}.attn.hook_pattern", 2, 1),
    "z": ("blocks.{}.attn.hook_z", 1, 2),
    "result": ("blocks.{}.attn.hook_result", 1, 2),
    "attn_out": ("blocks.{}.hook_attn_out", 1, None),
    "mlp_in": ("blocks.{}.ln2.hook_normalized", 1, None),
    "mlp_post": ("blocks.{}.mlp.hook_post", 1, None),
    "mlp_out": ("blocks.{}.hook_mlp_out", 1, None),
}
HEAD_STREAMS = [s for s, (_, _, head_axis) in HOOKS.items() if head_axis is not None]


def test_table_covers_every_stream():
    assert set(HOOKS) == set(stream_names())


def direct_patch(model, pairs, stream, layer, positions, heads):
    """Mean logit difference of one full forward on the corrupted prompts with one hook."""
    template, pos_axis, head_axis = HOOKS[stream]
    name = template.format(layer)
    model.set_use_attn_result(stream == "result")
    try:
        _, clean_cache = model.run_with_cache(pairs.clean_tokens, names_filter=name)
        rows = torch.arange(pairs.n_pairs)

        def hook(act, hook):
            act = act.clone()
            source = clean_cache[name]
            for b in range(pairs.n_pairs):
                cells = positions if positions != "END" else [int(pairs.final_positions[b])]
                for p in cells:
                    index = [b, slice(None), slice(None), slice(None)][: act.dim()]
                    index[pos_axis] = p
                    if heads is not None:
                        for h in heads:
                            index[head_axis] = h
                            act[tuple(index)] = source[tuple(index)]
                    else:
                        act[tuple(index)] = source[tuple(index)]
            return act

        logits = model.run_with_hooks(pairs.corrupted_tokens, fwd_hooks=[(name, hook)])
    finally:
        model.set_use_attn_result(False)
    return logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean().item()


@pytest.fixture(scope="module")
def pairs(toy_model):
    return ioi_pairs(toy_model, n_prompts=6)


@pytest.mark.parametrize("stream", list(HOOKS))
def test_layer_position(toy_model, pairs, stream):
    """Each position alone, a set of positions together, and the named END position, at both layers."""
    positions = [pairs.named_positions["S2"][0].item(), 3, (2, 4, 10), "END"]
    locations = enumerate_locations([stream], [0, 1], positions, heads=None, shape=toy_model.cfg)
    ours = patch_sweep(toy_model, pairs, locations, progress=False)
    for loc, value in zip(locations, ours.logit_diff.tolist()):
        spec = loc.positions
        cells = list(spec) if isinstance(spec, tuple) else (spec if spec == "END" else [spec])
        assert value == pytest.approx(direct_patch(toy_model, pairs, stream, loc.layer, cells, None), abs=1e-4), loc


@pytest.mark.parametrize("stream", HEAD_STREAMS)
def test_layer_head_position(toy_model, pairs, stream):
    """Single heads, a head group and leave-one-out, at single positions and at every position."""
    width, n_heads = pairs.width, toy_model.cfg.n_heads
    s2 = pairs.named_positions["S2"][0].item()
    for heads_spec in ("each", [[0, 2]], "leave_one_out"):
        locations = enumerate_locations([stream], [0, 1], [s2, width - 1, "all"], heads=heads_spec, shape=toy_model.cfg)
        ours = patch_sweep(toy_model, pairs, locations, progress=False)
        for loc, value in zip(locations, ours.logit_diff.tolist()):
            cells = list(range(width)) if loc.positions == "all" else [loc.positions]
            assert value == pytest.approx(direct_patch(toy_model, pairs, stream, loc.layer, cells, loc.heads), abs=1e-4), loc


def tl_metric(pairs):
    return lambda logits: logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()


TL_BY_POS = {  # (layer, pos, head) ordering, except the pattern: (layer, head, dest_pos)
    "z": patching.get_act_patch_attn_head_out_by_pos,
    "q": patching.get_act_patch_attn_head_q_by_pos,
    "k": patching.get_act_patch_attn_head_k_by_pos,
    "v": patching.get_act_patch_attn_head_v_by_pos,
    "pattern": patching.get_act_patch_attn_head_pattern_by_pos,
}
TL_ALL_POS = {
    "z": patching.get_act_patch_attn_head_out_all_pos,
    "q": patching.get_act_patch_attn_head_q_all_pos,
    "k": patching.get_act_patch_attn_head_k_all_pos,
    "v": patching.get_act_patch_attn_head_v_all_pos,
    "pattern": patching.get_act_patch_attn_head_pattern_all_pos,
}


@pytest.mark.parametrize("stream", list(TL_BY_POS))
def test_head_sweeps_match_transformer_lens(toy_model, pairs, stream):
    n_layers, n_heads, width = toy_model.cfg.n_layers, toy_model.cfg.n_heads, pairs.width
    _, clean_cache = toy_model.run_with_cache(pairs.clean_tokens)
    # layer x head, all positions
    locations = enumerate_locations([stream], list(range(n_layers)), ["all"], heads="each", shape=toy_model.cfg)
    ours = patch_sweep(toy_model, pairs, locations, progress=False).logit_diff.view(n_layers, n_heads)
    theirs = TL_ALL_POS[stream](toy_model, pairs.corrupted_tokens, clean_cache, tl_metric(pairs))
    torch.testing.assert_close(ours, theirs.float(), atol=1e-4, rtol=0)
    # layer x head x position
    locations = enumerate_locations([stream], list(range(n_layers)), list(range(width)), heads="each", shape=toy_model.cfg)
    ours = patch_sweep(toy_model, pairs, locations, progress=False).logit_diff.view(n_layers, n_heads, width)
    theirs = TL_BY_POS[stream](toy_model, pairs.corrupted_tokens, clean_cache, tl_metric(pairs)).float()
    expected = theirs if stream == "pattern" else theirs.permute(0, 2, 1)
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)
    assert expected.abs().max() > 0.01
