"""Path patching against the plain two-forward algorithm, a hand computation and a model whose paths are known."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab.errors import CircuitlabError, ConfigError
from circuitlab.locations import Location
from circuitlab.methods.path_patching.compute import Receiver, check_senders, parse_receiver, path_patch
from circuitlab.metrics import logit_diff
from circuitlab.tasks.base import PromptPairs
from tests.path_patching_reference import reference_path_patch


def small_model(**overrides) -> HookedTransformer:
    cfg = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=40, act_fn="gelu_new",
               normalization_type="LN", seed=1, device="cpu")
    model = HookedTransformer(HookedTransformerConfig(**{**cfg, **overrides}))
    model.eval()
    return model


def random_pairs(n_prompts: int = 5, width: int = 9, d_vocab: int = 40, ragged: bool = True) -> PromptPairs:
    """Corrupted prompts differ at positions 1, 4 and 6; with `ragged`, prompts end at different positions."""
    g = torch.Generator().manual_seed(3)
    clean = torch.randint(0, d_vocab, (n_prompts, width), generator=g)
    corrupted = clean.clone()
    corrupted[:, [1, 4, 6]] = torch.randint(0, d_vocab, (n_prompts, 3), generator=g)
    lengths = torch.tensor([width - (i % 2 if ragged else 0) for i in range(n_prompts)])
    return PromptPairs(
        clean_tokens=clean, corrupted_tokens=corrupted,
        answer_tokens=torch.randint(0, d_vocab, (n_prompts,), generator=g),
        wrong_tokens=torch.randint(0, d_vocab, (n_prompts,), generator=g),
        lengths=lengths, named_positions={"END": lengths - 1, "SEVEN": torch.full((n_prompts,), 7)},
        clean_texts=[""] * n_prompts, corrupted_texts=[""] * n_prompts, first_prompt_tokens=[],
    )


def senders_of(model: HookedTransformer, before: int) -> list[Location]:
    heads = [Location("z", l, "all", (h,), "", h) for l in range(before) for h in range(model.cfg.n_heads)]
    return heads + [Location("mlp_out", l, "all", None, "", None) for l in range(before)] + [
        Location("attn_out", 0, "all", None, "", None), Location("z", before - 1, "all", (0, 2), "", None)]


RECEIVER_SETS = {
    "final resid": ["resid_post.2"],
    "resid_pre inside": ["resid_pre.2"],
    "one head's v": ["v.2.3"],
    "q and k of two layers": ["q.2.1", "k.1.0"],
    "resid and a head": ["resid_pre.1", "v.2.0"],
}


@pytest.mark.parametrize("receivers", list(RECEIVER_SETS.values()), ids=list(RECEIVER_SETS))
def test_equals_plain_two_forward_reference(receivers):
    model = small_model()
    pairs = random_pairs()
    parsed = [parse_receiver(r, 3, 4) for r in receivers]
    senders = check_senders(senders_of(model, 3), parsed, begin_layer=0)
    ours = path_patch(model, pairs, senders, parsed, progress=False, memory_budget_mb=1).logit_diff
    mask = torch.ones(pairs.n_pairs, pairs.width, dtype=torch.bool)
    theirs = reference_path_patch(model, pairs, senders, parsed, mask)
    assert theirs.abs().max() > 1e-2  # the senders do something
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positions", ["END", "SEVEN", (4, 6)])
def test_receiver_positions_match_reference(positions):
    model = small_model()
    pairs = random_pairs()
    receivers = [parse_receiver("q.2.1", 3, 4), parse_receiver("resid_pre.2", 3, 4)]
    senders = senders_of(model, 2)
    ours = path_patch(model, pairs, senders, receivers, receiver_positions=positions, progress=False).logit_diff
    mask = torch.zeros(pairs.n_pairs, pairs.width, dtype=torch.bool)
    rows = torch.arange(pairs.n_pairs)
    if isinstance(positions, str):
        mask[rows, pairs.named_positions[positions]] = True
    else:
        mask[:, list(positions)] = True
    torch.testing.assert_close(ours, reference_path_patch(model, pairs, senders, receivers, mask), atol=1e-5, rtol=1e-4)


def test_grouped_query_attention_receivers_are_single_heads():
    model = small_model(n_key_value_heads=2)
    pairs = random_pairs()
    receivers = [parse_receiver("v.2.1", 3, 4)]
    senders = senders_of(model, 2)
    ours = path_patch(model, pairs, senders, receivers, progress=False).logit_diff
    mask = torch.ones(pairs.n_pairs, pairs.width, dtype=torch.bool)
    torch.testing.assert_close(ours, reference_path_patch(model, pairs, senders, receivers, mask), atol=1e-5, rtol=1e-4)
    head_0 = path_patch(model, pairs, senders, [parse_receiver("v.2.0", 3, 4)], progress=False).logit_diff
    assert (ours - head_0).abs().max() > 1e-4  # heads 0 and 1 share a key/value head, yet are patched alone
    assert model.cfg.ungroup_grouped_query_attention is False  # restored


def test_sender_into_final_residual_is_its_direct_effect():
    """Attention-only model: the final residual stream is the base one plus the sender's change of output,
    so the logits are computed by hand."""
    model = small_model(attn_only=True)
    pairs = random_pairs(ragged=False)
    senders = [Location("z", l, "all", (h,), "", h) for l in range(3) for h in range(4)]
    ours = path_patch(model, pairs, senders, [Receiver("resid_post", 2)], progress=False).logit_diff
    _, base = model.run_with_cache(pairs.corrupted_tokens)
    _, source = model.run_with_cache(pairs.clean_tokens)
    by_hand = []
    for loc in senders:
        name, h = f"blocks.{loc.layer}.attn.hook_z", loc.head
        change = (source[name][:, -1, h] - base[name][:, -1, h]) @ model.blocks[loc.layer].attn.W_O[h]
        final = base["blocks.2.hook_resid_post"][:, -1] + change
        logits = model.unembed(model.ln_final(final[:, None]))[:, 0]
        by_hand.append(logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean())
    torch.testing.assert_close(ours, torch.stack(by_hand), atol=1e-5, rtol=1e-4)


def known_path_model() -> HookedTransformer:
    """Attention only, no norms: head 0.1 writes only to dimensions 0..7, the other layer-0 heads only to
    8..31; head 1.2 reads its values only from dimensions 0..7, head 1.3's values are zero, head 1.0 reads all."""
    model = small_model(attn_only=True, normalization_type=None, n_layers=2)
    with torch.no_grad():
        attn0, attn1 = model.blocks[0].attn, model.blocks[1].attn
        attn0.W_O[1, :, 8:] = 0
        attn0.W_O[[0, 2, 3], :, :8] = 0
        attn1.W_V[2, 8:] = 0
        attn1.W_V[3] = 0
        attn1.b_V[3] = 0
        attn0.W_O[1] *= 20  # a path strong enough to read clearly
        attn1.W_V[2] *= 20
    return model


def test_known_path_shows_only_on_that_path():
    model = known_path_model()
    pairs = random_pairs()
    senders = [Location("z", 0, "all", (h,), "", h) for h in range(4)]
    base = path_patch(model, pairs, senders, [Receiver("v", 1, 2)], progress=False)
    effect = base.logit_diff - base.corrupted_logit_diff
    assert effect[1].abs() > 1e-2
    assert effect[[0, 2, 3]].abs().max() < 1e-6
    silent = path_patch(model, pairs, senders, [Receiver("v", 1, 3)], progress=False)
    assert (silent.logit_diff - silent.corrupted_logit_diff).abs().max() < 1e-6
    reads_all = path_patch(model, pairs, senders, [Receiver("v", 1, 0)], progress=False)
    assert ((reads_all.logit_diff - reads_all.corrupted_logit_diff).abs() > 1e-4).all()


def test_noop_sender_and_metrics_normalise():
    """A head whose output matrix is zero writes nothing: patching it leaves the corrupted run's numbers exactly,
    while its neighbours change them; metrics and the normalised score are reported as asked."""
    model = small_model()
    model.blocks[0].attn.W_O.data[1] = 0.0
    pairs = random_pairs()
    senders = [Location("z", 0, "all", (h,), "", h) for h in range(4)]
    result = path_patch(model, pairs, senders, [Receiver("resid_pre", 2)], progress=False, metrics=("logit_diff", "accuracy"))
    assert set(result.metrics) == {"logit_diff", "accuracy"}
    assert result.logit_diff[1].item() == pytest.approx(result.corrupted_logit_diff, abs=1e-6)
    assert (result.logit_diff[[0, 2, 3]] - result.corrupted_logit_diff).abs().min() > 1e-4
    normalised = (result.logit_diff - result.corrupted_logit_diff) / (result.clean_logit_diff - result.corrupted_logit_diff)
    torch.testing.assert_close(result.normalized, normalised)


@pytest.mark.parametrize(
    "spec, message",
    [("resid_post.5", "layers 0..2"), ("v.1.9", "heads 0..3"), ("v.1", "q.L.H"), ("mlp_out.1", "resid_pre.L"), ("bogus.1", "resid_pre.L"),
     ("resid_post.x", "resid_pre.L")],
)
def test_bad_receivers(spec, message):
    with pytest.raises(ConfigError, match="method.receivers") as err:
        parse_receiver(spec, 3, 4)
    assert message in str(err.value)


def test_receiver_at_or_before_begin_layer_and_empty_senders():
    model = small_model()
    with pytest.raises(ConfigError, match="method.begin_layer=2"):
        check_senders(senders_of(model, 3), [Receiver("v", 2, 0)], begin_layer=2)
    with pytest.raises(CircuitlabError, match="no sender left"):
        check_senders([Location("z", 2, "all", (0,), "", 0)], [Receiver("v", 2, 0)], begin_layer=0)
    with pytest.raises(ConfigError, match="sweep.positions"):
        check_senders([Location("z", 0, 3, (0,), "", 0)], [Receiver("v", 2, 0)], begin_layer=0)
    assert len(check_senders(senders_of(model, 3), [Receiver("resid_post", 2)], begin_layer=1)) == 4 + 4 + 1 + 1 + 1


def test_run_writes_variation_important_heads_and_patterns(tmp_path):
    import pandas as pd

    from circuitlab import cli
    from circuitlab.results import load_tensors, read_results
    from circuitlab.run import run_experiment

    cfg = cli.compose_config(["+experiment=ioi_path_to_name_movers", "method.receivers=[resid_post.-1]", "task.n_prompts=16", "progress=false"])
    manifest = run_experiment(cfg, tmp_path)
    frame = read_results(tmp_path)
    wide = frame.pivot_table(index=["layer", "head"], columns="metric", values="value")
    torch.testing.assert_close(torch.tensor(wide["logit_diff_variation"].values), -torch.tensor(wide["logit_diff_normalized"].values))
    assert set(frame["receiver"]) == {"resid_post.1"} and manifest["receivers"] == ["resid_post.1"]
    important = pd.read_csv(tmp_path / "important_heads.csv")
    above = wide[wide["logit_diff_variation"].abs() > 0.02]
    assert len(important) == len(above) > 0
    patterns = pd.read_csv(tmp_path / "attention_patterns.csv", dtype={"head": str})
    assert set(patterns["head"]) <= {f"{l}.{h}" for l, h in above.index}
    rows = patterns.groupby(["head", "query"])["weight"].sum()
    torch.testing.assert_close(torch.tensor(rows.values), torch.ones(len(rows), dtype=torch.float64), atol=1e-5, rtol=0)
    assert load_tensors(tmp_path / "results.pt")["attention_patterns"].shape[0] == patterns["head"].nunique()
    assert {"path_patching_heatmap.png", "attention_patterns.png"} <= {p.name for p in (tmp_path / "figures").iterdir()}
