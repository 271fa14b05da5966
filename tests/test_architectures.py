"""Every supported architecture, as a tiny random-weight checkpoint written by `transformers` (tests/hf_fixtures.py),
loaded with `model=local`: logits equal `transformers` (eager attention), and every method equals an independent
computation on the same model (a direct hook written here or in the method's own tests, TransformerLens'
`patching` functions and cache decompositions)."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching

from circuitlab.config import ModelConfig
from circuitlab.locations import STREAMS, Location, enumerate_locations
from circuitlab.methods.ablation.compute import ablate
from circuitlab.engine.forward import final_position_logits
from circuitlab.engine.sweep import patch_sweep
from circuitlab.methods.das.compute import Training, das_sweep
from circuitlab.methods.direct_attribution.compute import HEAD_COMPONENTS, LAYER_COMPONENTS, direct_attribution
from circuitlab.methods.path_patching.compute import check_senders, parse_receiver, path_patch
from circuitlab.metrics import logit_diff
from circuitlab.models import hf_checkpoint, loading
from tests import hf_fixtures
from tests.conftest import ioi_pairs
from tests.test_ablation import LOCATIONS as ABLATED, by_hook
from tests.test_das import counterfactual_splits
from tests.path_patching_reference import reference_path_patch
from tests.test_streams import HOOKS, direct_patch

ATOL = 1e-4
ARCHS = hf_fixtures.ARCHITECTURES


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """arch -> (checkpoint dir, model loaded as `model=local` loads it, with the config's default processing),
    built on first use (not through load_model's per-process memo, which keeps only the last few)."""
    built, models = {}, {}
    defaults = ModelConfig()
    processing = {flag: getattr(defaults, flag) for flag in loading.PROCESSING_FLAGS}

    def get(arch: str, dtype: str = "float32"):
        if arch not in built:
            built[arch] = hf_fixtures.build(arch, tmp_path_factory.mktemp(arch))
        if (arch, dtype) not in models:
            models[arch, dtype] = hf_checkpoint.load_checkpoint(built[arch], dtype=loading.DTYPES[dtype], processing=processing)
        return built[arch], models[arch, dtype]

    return get


def present_streams(model) -> list[str]:
    """The streams this architecture has (parallel attention + MLP blocks have no resid_mid)."""
    return [s for s in HOOKS if not (s == "resid_mid" and model.cfg.parallel_attn_mlp)]


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_equal_transformers(zoo, arch):
    """The whole forward, and circuitlab's own final-position unembedding (soft cap included), equal transformers'
    eager forward; TransformerLens' processing (LN folding, centring) changes logits by a constant per row at most."""
    path, model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=6)
    rows = torch.arange(pairs.n_pairs)
    theirs = hf_fixtures.hf_model(path)(pairs.clean_tokens).logits[rows, pairs.final_positions]
    ours_logits, cache = model.run_with_cache(pairs.clean_tokens)
    final_resid = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    fast = final_position_logits(model, final_resid, pairs.final_positions)
    capped = (model.cfg.output_logits_soft_cap or 0) > 0
    centre = (lambda x: x) if capped else (lambda x: x - x.mean(-1, keepdim=True))
    for ours in (ours_logits[rows, pairs.final_positions], fast):
        torch.testing.assert_close(centre(ours), centre(theirs), atol=ATOL, rtol=0)
    if capped:
        assert theirs.abs().max() > 0.6 * model.cfg.output_logits_soft_cap  # the cap bends these logits


@pytest.mark.parametrize("arch", ARCHS)
def test_activation_patching_every_stream(zoo, arch):
    """Every stream at both layers, at one position and the named END, per head where the stream has heads (key /
    value heads under grouped-query attention), equals one hooked forward each; the residual sweep equals
    TransformerLens' patching function."""
    _, model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=4)
    s2 = pairs.named_positions["S2"][0].item()
    for stream in present_streams(model):
        heads = "each" if STREAMS[stream].has_heads else None
        locations = enumerate_locations([stream], [0, 1], [s2, "END"], heads=heads, shape=model.cfg)
        ours = patch_sweep(model, pairs, locations, progress=False).logit_diff
        for loc, value in zip(locations, ours.tolist()):
            cells = "END" if loc.positions == "END" else [loc.positions]
            assert value == pytest.approx(direct_patch(model, pairs, stream, loc.layer, cells, loc.heads), abs=ATOL), (arch, loc)
    n_layers, width = model.cfg.n_layers, pairs.width
    locations = enumerate_locations(["resid_pre"], list(range(n_layers)), list(range(width)))
    ours = patch_sweep(model, pairs, locations, progress=False).logit_diff.view(n_layers, width)
    _, clean_cache = model.run_with_cache(pairs.clean_tokens)
    metric = lambda logits: logit_diff(logits[:, -1], pairs.answer_tokens, pairs.wrong_tokens).mean()  # noqa: E731
    theirs = patching.get_act_patch_resid_pre(model, pairs.corrupted_tokens, clean_cache, metric).float()
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    assert theirs.abs().max() > 0.01


def test_key_value_heads_are_the_grouped_ones(zoo):
    """Under grouped-query attention a k / v head sweep has n_key_value_heads points per layer, q and z n_heads."""
    _, model = zoo("llama")
    assert model.cfg.n_key_value_heads < model.cfg.n_heads
    count = lambda stream: len(enumerate_locations([stream], [0], ["END"], heads="each", shape=model.cfg))  # noqa: E731
    assert (count("k"), count("v"), count("q"), count("z")) == (model.cfg.n_key_value_heads,) * 2 + (model.cfg.n_heads,) * 2


@pytest.mark.parametrize("arch", ARCHS)
def test_path_patching_equals_two_forward_reference(zoo, arch):
    """Senders in layer 0 into the final residual stream and into one layer-1 head's values and queries."""
    _, model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=4)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    senders = [Location("z", 0, "all", (h,), "", h) for h in range(n_heads)] + [Location("mlp_out", 0, "all", None, "", None)]
    mask = torch.ones(pairs.n_pairs, pairs.width, dtype=torch.bool)
    for receivers in (["resid_post.1"], ["v.1.1", "q.1.2"]):
        parsed = [parse_receiver(r, n_layers, n_heads) for r in receivers]
        kept = check_senders(senders, parsed, begin_layer=0)
        ours = path_patch(model, pairs, kept, parsed, progress=False).logit_diff
        theirs = reference_path_patch(model, pairs, kept, parsed, mask)
        torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
        assert theirs.abs().max() > 1e-3, receivers


@pytest.mark.parametrize("arch", ARCHS)
def test_vanilla_interchange_equals_a_direct_hook(zoo, arch):
    """IIA of swapping the final residual stream and one head's z at END from the source run."""
    _, model = zoo(arch)
    train, test = counterfactual_splits(model, n_prompts=16, n_train=16)
    locations = [Location("resid_post", 1, "END", None, "", None), Location("z", 1, "END", (2,), "", 2)]
    ours = das_sweep(model, train, test, locations, Training(intervention="vanilla"), progress=False).iia
    _, source = model.run_with_cache(test.clean_tokens)
    rows, end = torch.arange(test.n_pairs), test.named_positions["END"]
    expected = []
    for loc in locations:
        name = loc.hook_name

        def swap(act, hook, loc=loc, name=name):
            act = act.clone()
            index = (rows, end) if loc.heads is None else (rows, end, loc.head)
            act[index] = source[name][index]
            return act

        logits = model.run_with_hooks(test.corrupted_tokens, fwd_hooks=[(name, swap)])[rows, test.final_positions]
        expected.append((logits.argmax(-1) == test.answer_tokens).float().mean())
    torch.testing.assert_close(ours, torch.stack(expected))


@pytest.mark.parametrize("arch", ARCHS)
def test_ablation_equals_a_direct_hook(zoo, arch):
    _, model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=6)
    scales = [0.0, 2.0]
    for mode in ("resample", "mean", "zero"):
        results = ablate(model, pairs, ABLATED, mode, scales, progress=False)
        for scale in scales:
            expected = torch.tensor([by_hook(model, pairs, loc, mode, scale) for loc in ABLATED])
            torch.testing.assert_close(results[scale].logit_diff, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_direct_attribution_decomposes_the_uncapped_logits(zoo, arch):
    """Components sum to the logit difference before the soft cap; heads and the output bias sum to their layer's
    attention output (through Gemma's and OLMo-2's post-attention norms); the layers equal TransformerLens' decomposition and,
    where there is no post-attention norm, the heads its per-head results."""
    _, model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=8)
    result = direct_attribution(model, pairs)
    assert result.decomposition_error < ATOL
    rows = torch.arange(pairs.n_pairs)
    logits = model(pairs.clean_tokens)[rows, pairs.final_positions]
    assert result.logit_diff == pytest.approx(logit_diff(logits, pairs.answer_tokens, pairs.wrong_tokens).mean().item(), abs=ATOL)
    for layer in range(model.cfg.n_layers):
        attn = [v for name, l, _, v in result.components if l == layer and name == "attn_out"]
        parts = [v for name, l, _, v in result.components if l == layer and name in HEAD_COMPONENTS]
        assert sum(parts) == pytest.approx(attn[0], abs=ATOL)
    _, cache = model.run_with_cache(pairs.clean_tokens)
    direction = (model.W_U[:, pairs.answer_tokens] - model.W_U[:, pairs.wrong_tokens]).T
    stack = cache.decompose_resid(layer=-1, pos_slice=-1)
    weight = getattr(model.ln_final, "w", 1.0)  # a final norm's weight TransformerLens' stack leaves out (OLMo-2: not folded)
    theirs = (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * weight * direction).sum(-1).mean(-1)
    ours = [v for name, _, _, v in result.components if name in LAYER_COMPONENTS]
    torch.testing.assert_close(torch.tensor(ours), theirs, atol=ATOL, rtol=0)
    if arch not in hf_fixtures.POST_NORM:
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)
        theirs_heads = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1)
        torch.testing.assert_close(torch.tensor([v for name, _, _, v in result.components if name == "head"]), theirs_heads, atol=ATOL, rtol=0)


BF16_TOLERANCE = 0.02  # of the largest final-position logit: bfloat16 keeps 8 bits of mantissa (0.4% per rounding)


@pytest.mark.parametrize("arch", ["llama", "gemma2", "gemma3"])
def test_bfloat16_on_cpu_stays_close_to_float32(zoo, arch):
    """bfloat16 weights and activations: every patched logit difference, and the clean and corrupted baselines,
    within BF16_TOLERANCE of the logit scale of their float32 values."""
    _, model32 = zoo(arch)
    _, model16 = zoo(arch, "bfloat16")
    assert model16.cfg.dtype == torch.bfloat16 and next(model16.parameters()).dtype == torch.bfloat16
    pairs = ioi_pairs(model32, n_prompts=8)
    locations = enumerate_locations(["resid_pre", "attn_out", "mlp_out"], [0, 1], list(range(pairs.width)))
    full, half = (patch_sweep(m, pairs, locations, progress=False) for m in (model32, model16))
    scale = model32(pairs.clean_tokens)[torch.arange(pairs.n_pairs), pairs.final_positions].abs().max().item()
    assert (full.logit_diff - half.logit_diff).abs().max() < BF16_TOLERANCE * scale
    for run in ("clean", "corrupted"):
        assert abs(getattr(full, run)["logit_diff"] - getattr(half, run)["logit_diff"]) < BF16_TOLERANCE * scale


def test_a_stream_the_architecture_lacks_is_refused(zoo):
    """Parallel attention + MLP blocks (GPT-NeoX) have no resid_mid: refused in one line naming what there is."""
    from circuitlab.errors import ConfigError
    from circuitlab.locations import check_present
    from circuitlab.models.loading import ModelShape

    _, model = zoo("pythia")
    for shape in (model.cfg, ModelShape.of(model.cfg)):
        with pytest.raises(ConfigError, match=r"sweep.streams=resid_mid is not allowed; allowed: resid_pre, resid_post.*side by side"):
            check_present(["resid_pre", "resid_mid"], shape)
    check_present(list(HOOKS), zoo("llama")[1].cfg)


@pytest.mark.parametrize("arch", ARCHS)
def test_edge_methods_equal_plain_references(zoo, arch):
    """Exact edge patching of a sample of edges (every receiver kind, k / v per query head under grouped-query
    attention) = two forwards per edge; EAP = hand gradient x difference; the masked forward's empty / full
    circuits = the corrupted / clean runs, and its all-but-one circuits = those edges' exact patches. Post-norm
    models (Gemma-2, Gemma 3, OLMo-2) too: a head's output is its share of the normalised attention output
    (tests/edge_reference.py reads the norm's scale at its own hook)."""
    from circuitlab.edges import attribution, masked
    from circuitlab.edges import counterfactual as cf
    from circuitlab.edges.graph import EdgeGraph
    from circuitlab.edges.hooks import check_additive
    from circuitlab.edges.patching import patch_edges
    from tests import edge_reference
    from tests.test_edges import sample_edges

    _, model = zoo(arch)
    check_additive(model.cfg)
    pairs = ioi_pairs(model, n_prompts=4)
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 14, seed=1)
    names = [graph.edge_name(s, r) for s, r in edges]
    exact, clean = patch_edges(model, pairs, graph, "patching", edges)
    reference = torch.tensor([edge_reference.patch_edge(model, pairs, name) for name in names])
    assert torch.allclose(exact, reference, atol=ATOL), (arch, (exact - reference).abs().max())
    assert (reference - clean).abs().max() > 1e-3  # some sampled edge matters
    scores = attribution.edge_scores(model, pairs, graph, "patching")
    estimates = torch.tensor([float(scores[s, r]) for s, r in edges])
    theirs = torch.tensor(edge_reference.attribution(model, pairs, names))
    assert torch.allclose(estimates, theirs, atol=ATOL), (arch, (estimates - theirs).abs().max())
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    all_but = [graph.real.clone() for _ in edges[:4]]
    for keep, edge in zip(all_but, edges):
        keep[edge] = False
    values, _ = masked.circuits_logit_diff(model, pairs, graph, sources, torch.stack([torch.zeros_like(graph.real), graph.real, *all_but]))
    with torch.no_grad():
        rows = torch.arange(pairs.n_pairs)
        corrupted = logit_diff(model(pairs.corrupted_tokens)[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
    assert abs(float(values[0]) - float(corrupted)) < ATOL and abs(float(values[1]) - clean) < ATOL
    torch.testing.assert_close(values[2:], reference[:4], atol=ATOL, rtol=0)


def one_call_reference(path, processing: dict):
    """The model as TransformerLens processes it in one `load_and_process_state_dict` call (what load_checkpoint did
    before it processed in steps to hold fewer copies of the weights)."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    cfg = hf_checkpoint.tl_config(path, fold_ln=processing["fold_ln"])
    flags = hf_checkpoint.processing_flags(cfg, processing)
    with hf_checkpoint.quiet():
        state_dict = get_pretrained_state_dict(str(path), cfg, hf_model=hf_fixtures.hf_model(path))
        model = HookedTransformer(cfg, tokenizer=hf_checkpoint.load_tokenizer(path), move_to_device=False)
        model.load_and_process_state_dict(state_dict, **flags)
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_processing_in_steps_equals_one_call(zoo, arch):
    """Weights processed in steps (one copy of the state dict at a time) are TransformerLens' one call with the
    config's default processing, to float rounding: its centring means sum the loaded (contiguous) weights, not the
    converter's views, so a few values move by an ulp. With refactored attention matrices too (not for rotary
    models), whose SVD factors differ with such rounding, the factored products W_Q W_K^T, W_V W_O and the logits."""
    path, ours = zoo(arch)
    defaults = ModelConfig()
    processing = {flag: getattr(defaults, flag) for flag in loading.PROCESSING_FLAGS}
    reference = one_call_reference(path, processing)
    assert ours.cfg.normalization_type == reference.cfg.normalization_type
    theirs, mine = reference.state_dict(), ours.state_dict()
    assert mine.keys() == theirs.keys()
    for name in mine:
        torch.testing.assert_close(mine[name], theirs[name], rtol=1e-6, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}")
    if ours.cfg.positional_embedding_type == "rotary":
        return
    every = {flag: True for flag in loading.PROCESSING_FLAGS}
    ours, reference = hf_checkpoint.load_checkpoint(path, processing=every), one_call_reference(path, every)
    torch.testing.assert_close(ours.W_Q @ ours.W_K.transpose(-1, -2), reference.W_Q @ reference.W_K.transpose(-1, -2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours.W_V @ ours.W_O, reference.W_V @ reference.W_O, rtol=1e-4, atol=1e-4)
    tokens = ioi_pairs(ours).clean_tokens
    torch.testing.assert_close(ours(tokens), reference(tokens), rtol=1e-4, atol=1e-3)  # logits of ~40
