"""Edge-level circuit discovery (circuitlab/edges/, methods eap / eap_ig / edge_patching) against plain references
(tests/edge_reference.py), the model whose circuit is known by construction, and MIB's definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from circuitlab import cli
from circuitlab.edges import attribution, circuits, masked
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.patching import patch_edges
from circuitlab.errors import ConfigError
from circuitlab.metrics import logit_diff
from circuitlab.models.known_circuit import CIRCUIT_EDGES
from circuitlab.tasks.base import PromptPairs
from tests import edge_reference

ATOL = 1e-4
KNOWN = Path(__file__).resolve().parents[1] / "circuitlab" / "models" / "embedded" / "known-circuit"


def random_model(**overrides) -> HookedTransformer:
    settings = dict(n_layers=3, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=16, d_vocab=60, act_fn="gelu",
                    normalization_type="LN", seed=0, device="cpu")
    model = HookedTransformer(HookedTransformerConfig(**{**settings, **overrides}))
    generator = torch.Generator().manual_seed(1)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=generator) * 0.3
    return model.eval()


def random_pairs(n=6, width=9, first_difference=4, d_vocab=60, seed=0) -> PromptPairs:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, d_vocab, (n, width), generator=g)
    corrupted = clean.clone()
    corrupted[:, first_difference:] = torch.randint(0, d_vocab, (n, width - first_difference), generator=g)
    answer, wrong = torch.randint(0, d_vocab, (n,), generator=g), torch.randint(0, d_vocab, (n,), generator=g)
    return PromptPairs(clean, corrupted, answer, wrong, torch.full((n,), width), {}, [""] * n, [""] * n, [])


@pytest.fixture(scope="module")
def model():
    return random_model()


@pytest.fixture(scope="module")
def pairs():
    return random_pairs()


def sample_edges(graph: EdgeGraph, k: int, seed: int = 0) -> list[tuple[int, int]]:
    picked = torch.randperm(graph.n_edges, generator=torch.Generator().manual_seed(seed))[:k].tolist()
    chosen = {graph.edges[i] for i in picked}
    chosen |= {(0, graph.logits_receiver), (graph.mlp_sender(0), graph.mlp_receiver(1)), (0, graph.head_receiver(0, "k", 2))}
    return sorted(chosen)


def test_edge_counts_match_mib():
    assert EdgeGraph(12, 12, d_model=768).n_edges == 32491  # GPT-2 small, as MIB / EAP-IG count it
    assert EdgeGraph(24, 14, d_model=896).n_edges == 179749  # Qwen2.5-0.5B (q, k, v per query head)
    gptj = EdgeGraph(2, 2, parallel_attn_mlp=True)
    assert not gptj.real[gptj.head_sender(1, 0), gptj.mlp_receiver(1)] and gptj.real[gptj.head_sender(0, 0), gptj.mlp_receiver(1)]
    attn_only = EdgeGraph(2, 2, has_mlp=False)
    assert attn_only.n_edges == 6 * 1 + 6 * 3 + 5 and not any(n.startswith("m") for n in attn_only.senders)


@pytest.mark.parametrize("name, message", [
    ("a9.h0->logits", "a9.h0 does not exist"), ("a0.h7->m1", "a0.h7 does not exist"), ("m1->a0.h0<q>", "does not feed"),
    ("input->a0.h0", "SENDER->RECEIVER"), ("logits->m0", "SENDER->RECEIVER"), ("input->a0.h0<x>", "SENDER->RECEIVER"),
])
def test_an_edge_that_does_not_exist_is_one_line(name, message):
    with pytest.raises(ConfigError) as err:
        EdgeGraph(2, 4).parse_edge(name, "method.edges")
    assert message in str(err.value) and "method.edges" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("counterfactual", ["patching", "mean", "zero"])
def test_exact_edge_patching_equals_two_forwards_per_edge(model, pairs, counterfactual):
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 40)
    ours, clean = patch_edges(model, pairs, graph, counterfactual, edges, memory_budget_mb=1)  # tiny chunks too
    reference = torch.tensor([edge_reference.patch_edge(model, pairs, graph.edge_name(s, r), counterfactual) for s, r in edges])
    assert torch.allclose(ours, reference, atol=ATOL), (ours - reference).abs().max()
    assert (ours - clean).abs().max() > 1e-3  # the edges do something


def test_eap_equals_gradient_times_difference(model, pairs):
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 60)
    scores = attribution.edge_scores(model, pairs, graph, "patching", batch_size=4)  # two batches
    reference = edge_reference.attribution(model, pairs, [graph.edge_name(s, r) for s, r in edges])
    ours = torch.tensor([float(scores[s, r]) for s, r in edges])
    assert torch.allclose(ours, torch.tensor(reference), atol=ATOL)
    assert (scores[~graph.real] == 0).all()


@pytest.mark.parametrize("counterfactual", ["patching", "mean", "zero"])
def test_eap_in_prompt_batches_sized_by_the_memory_budget(model, pairs, counterfactual, caplog):
    """memory_budget_mb=1 splits the prompts into batches (4 + 2): the same scores as the plain reference, and for
    EAP-IG as the steps run over all prompts at once."""
    graph = EdgeGraph.of(model.cfg)
    assert 1 <= attribution.prompts_per_backward(model, graph, pairs.width, 1) < pairs.n_pairs
    assert attribution.prompts_per_backward(model, graph, pairs.width, 1024) >= pairs.n_pairs
    assert attribution.prompts_per_backward(model, graph, 4 * pairs.width, 64) < attribution.prompts_per_backward(model, graph, pairs.width, 64)
    edges = sample_edges(graph, 60, seed=2)
    with caplog.at_level("INFO", logger="circuitlab"):
        scores = attribution.edge_scores(model, pairs, graph, counterfactual, memory_budget_mb=1, progress=True)
    assert "2 batch(es) of up to 4 prompts" in caplog.text
    reference = edge_reference.attribution(model, pairs, [graph.edge_name(s, r) for s, r in edges], counterfactual)
    assert torch.allclose(torch.tensor([float(scores[s, r]) for s, r in edges]), torch.tensor(reference), atol=ATOL)
    assert (scores[~graph.real] == 0).all() and scores[graph.real].abs().max() > 1e-3
    ig_whole = attribution.edge_scores(model, pairs, graph, counterfactual, ig_steps=3)
    ig_batched = attribution.edge_scores(model, pairs, graph, counterfactual, ig_steps=3, memory_budget_mb=1)
    assert torch.allclose(ig_batched, ig_whole, atol=1e-6) and not torch.allclose(ig_whole, scores, atol=1e-3)


def manual_input_ig(model, pairs, steps: int) -> float:
    """Integrated gradients of the metric on the input embeddings, summed: the k / steps points between the
    corrupted and the clean residual stream entering block 0 (TransformerLens' own autograd, no edge code)."""
    rows = torch.arange(pairs.n_pairs)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(pairs.clean_tokens, names_filter="blocks.0.hook_resid_pre")
        _, corrupted_cache = model.run_with_cache(pairs.corrupted_tokens, names_filter="blocks.0.hook_resid_pre")
    clean, corrupted = clean_cache["blocks.0.hook_resid_pre"], corrupted_cache["blocks.0.hook_resid_pre"]
    total = 0.0
    for k in range(1, steps + 1):
        point = (corrupted + k / steps * (clean - corrupted)).requires_grad_(True)
        with torch.enable_grad():
            logits = model.run_with_hooks(pairs.clean_tokens, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, hook: point)])
            (grad,) = torch.autograd.grad(logit_diff(logits[rows, -1], pairs.answer_tokens, pairs.wrong_tokens).mean(), point)
        total += float((grad * (clean - corrupted)).sum())
    return total / steps


def test_eap_ig_with_one_step_is_eap_and_its_input_edges_are_integrated_gradients(model, pairs):
    graph = EdgeGraph.of(model.cfg)
    eap = attribution.edge_scores(model, pairs, graph, "patching")
    assert torch.allclose(attribution.edge_scores(model, pairs, graph, "patching", ig_steps=1), eap, atol=1e-6)
    ig = attribution.edge_scores(model, pairs, graph, "patching", ig_steps=8)
    assert not torch.allclose(ig, eap, atol=1e-3)
    # the input feeds every receiver directly, so its edges' scores sum to IG of the input embeddings
    assert float(ig[0].sum()) == pytest.approx(manual_input_ig(model, pairs, 8), abs=1e-5)
    # and IG's completeness: with many steps that sum approaches m(clean) - m(corrupted)
    with torch.no_grad():
        rows = torch.arange(pairs.n_pairs)
        clean, corrupted = (logit_diff(model(t)[rows, -1], pairs.answer_tokens, pairs.wrong_tokens).mean().item()
                            for t in (pairs.clean_tokens, pairs.corrupted_tokens))
    many = attribution.edge_scores(model, pairs, graph, "patching", ig_steps=64)
    assert abs(float(many[0].sum()) - (clean - corrupted)) < 0.1 * abs(float(eap[0].sum()) - (clean - corrupted))


def test_masked_forward_empty_full_and_all_but_one(model, pairs):
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 5)
    masks = [torch.zeros_like(graph.real), graph.real.clone()]
    for s, r in edges:
        keep = graph.real.clone()
        keep[s, r] = False
        masks.append(keep)
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    values, forwards = masked.circuits_logit_diff(model, pairs, graph, sources, torch.stack(masks))
    rows = torch.arange(pairs.n_pairs)
    with torch.no_grad():
        clean, corrupted = (logit_diff(model(t)[rows, -1], pairs.answer_tokens, pairs.wrong_tokens).mean().item()
                            for t in (pairs.clean_tokens, pairs.corrupted_tokens))
    exact, _ = patch_edges(model, pairs, graph, "patching", edges)
    assert abs(values[0] - corrupted) < ATOL and abs(values[1] - clean) < ATOL and forwards == 1
    assert torch.allclose(values[2:], exact, atol=ATOL)


def test_pruning_keeps_only_paths_from_input_to_logits():
    graph = EdgeGraph(2, 2)
    keep = torch.zeros_like(graph.real)
    a00, a10, m0 = graph.head_sender(0, 0), graph.head_sender(1, 0), graph.mlp_sender(0)
    keep[0, graph.head_receiver(0, "v", 0)] = True          # input -> a0.h0<v>
    keep[a00, graph.head_receiver(1, "q", 0)] = True        # a0.h0 -> a1.h0<q>
    keep[a10, graph.logits_receiver] = True                  # a1.h0 -> logits: a path
    keep[m0, graph.logits_receiver] = True                   # m0 -> logits: m0 has no input edge
    keep[0, graph.head_receiver(1, "k", 1)] = True           # input -> a1.h1<k>: a1.h1 has no output edge
    pruned = circuits.prune(graph, keep)
    assert pruned.sum() == 3 and not pruned[m0].any() and not pruned[0, graph.head_receiver(1, "k", 1)]


def test_topn_threshold_greedy_and_areas():
    graph = EdgeGraph(2, 2)
    scores = torch.zeros(len(graph.senders), len(graph.receivers))
    a00 = graph.head_sender(0, 0)
    scores[0, graph.head_receiver(0, "v", 0)] = 3.0
    scores[a00, graph.logits_receiver] = -4.0
    scores[0, graph.logits_receiver] = 1.0
    scores[0, graph.mlp_receiver(1)] = 5.0   # the best edge, but m1 reaches the logits through nothing kept
    assert circuits.top_n(graph, scores, 2).sum() == 0  # 5 and -4: no path once pruned
    assert circuits.top_n(graph, scores, 3).sum() == 2
    assert circuits.top_n(graph, scores, 3, absolute=False).sum() == 1  # 5, 3, 1: only input -> logits is a path
    assert circuits.at_threshold(graph, scores, 2.5).sum() == 2
    grown = circuits.greedy(graph, scores, 2)  # from the logits: a0.h0 -> logits (|-4|), then a0.h0's best input
    assert grown[a00, graph.logits_receiver] and grown[0, graph.head_receiver(0, "v", 0)] and grown.sum() == 2
    assert circuits.area([0.1, 1, 10, 100], [1, 1, 1, 1]) == pytest.approx(0.999)
    assert circuits.area([50, 100], [0, 1]) == pytest.approx(0.25)
    expected = torch.zeros_like(graph.real)
    expected[a00, graph.logits_receiver] = True
    assert circuits.auroc(scores, expected, graph.real) == pytest.approx(1 - 1 / (graph.n_edges - 1))


@pytest.mark.parametrize("how, absolute", [("topn", True), ("topn", False), ("greedy", True), ("greedy", False)])
def test_a_circuit_of_n_edges_keeps_n_edges_after_pruning(how, absolute):
    """select(kept=True) = the shortest prefix of the ranking (of greedy's growth) whose pruned circuit keeps at least
    n edges, found by trying every prefix length in turn; MIB's count (kept=False) keeps the first n, pruned."""
    graph = EdgeGraph(3, 2)
    scores = torch.randn(graph.real.shape, generator=torch.Generator().manual_seed(3)) * graph.real
    cut = circuits.greedy if how == "greedy" else circuits.top_n
    assert torch.equal(circuits.select(graph, scores, how, 7, 0.0, absolute), cut(graph, scores, 7, absolute))
    for n in (1, 2, 5, 9, 20, 40, graph.n_edges):
        prefix = next(k for k in range(n, graph.n_edges + 1) if cut(graph, scores, k, absolute).sum() >= n)
        expected = cut(graph, scores, prefix, absolute)
        found = circuits.select(graph, scores, how, n, 0.0, absolute, kept=True)
        assert torch.equal(found, expected) and found.sum() >= n
    assert not circuits.select(graph, scores, how, 0, 0.0, absolute, kept=True).any()
    assert cut(graph, scores, 2, absolute).sum() < 2 or cut(graph, scores, 5, absolute).sum() < 5  # pruning does cut here


def run_cli(tmp_path: Path, *overrides: str) -> Path:
    out = tmp_path / "run"
    cli.main(["run", *overrides, f"run.dir={out}", "progress=false"])
    return out


@pytest.mark.parametrize("method", ["eap", "eap_ig", "edge_patching"])
def test_known_circuit_edges_rank_first_and_are_faithful(method, tmp_path):
    out = run_cli(tmp_path, "+experiment=known_circuit_eap", f"method={method}", "task.n_prompts=16", "figures=false")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["auroc"] == 1.0 and manifest["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)
    edges = pd.read_csv(out / "edges.csv")
    assert list(edges["edge"][:3]) and set(edges["edge"][:3]) == set(CIRCUIT_EDGES["patching"])
    assert set(edges[edges["in_circuit"]]["edge"]) == set(CIRCUIT_EDGES["patching"])
    graph = json.loads((out / "circuit.json").read_text())
    assert set(graph) == {"cfg", "nodes", "edges"} and len(graph["edges"]) == EdgeGraph(2, 4).n_edges
    assert {k for k, v in graph["edges"].items() if v["in_graph"]} == set(CIRCUIT_EDGES["patching"])
    assert graph["nodes"]["m0"]["in_graph"] and not graph["nodes"]["a0.h0"]["in_graph"]
    assert json.loads((KNOWN / "circuit.json").read_text())["edges"] == {k: list(v) for k, v in CIRCUIT_EDGES.items()}
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(edges) and set(results["metric"]) == {"score"}
    curve = pd.read_csv(out / "faithfulness.csv")
    assert set(curve["ranking"]) == {"circuit", "signed", "absolute"} and manifest["masked_forwards"] <= 2
    assert manifest["cpr"] == pytest.approx(circuits.area(list(curve[curve.ranking == "signed"]["percent"]),
                                                          list(curve[curve.ranking == "signed"]["faithfulness"])))


def test_known_circuit_under_zero_ablation_exact(tmp_path):
    expected = "[" + ",".join(f'"{e}"' for e in CIRCUIT_EDGES["zero"]) + "]"  # edge names with <q> are quoted in overrides
    out = run_cli(tmp_path, "+experiment=known_circuit_eap", "method=edge_patching", "method.counterfactual=zero",
                  "task.n_prompts=8", f"method.expected={expected}", "method.n_edges=9", "figures=false")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["auroc"] == 1.0 and manifest["circuit"]["faithfulness"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("override, field", [
    ("method.ig_steps=0", "method.ig_steps"), ("method.curve=[0,1]", "method.curve"), ("method.curve=[50,150]", "method.curve"),
    ('method.expected=["a5.h0->logits"]', "method.expected"), ("method.counterfactual=resample", "method.counterfactual"),
    ("method.select=best", "method.select"), ("method.n_edges=100000", "method.n_edges"),
])
def test_bad_edge_settings_are_one_line(override, field, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "+experiment=known_circuit_eap", "method=eap_ig", override, f"run.dir={tmp_path / 'x'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0] and not (tmp_path / "x").exists()


def test_edge_patching_edges_list_and_bad_edge(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "+experiment=known_circuit_eap", "method=edge_patching", 'method.edges=["m1->m0"]', f"run.dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "method.edges" in err[0] and "does not feed" in err[0]
    out = run_cli(tmp_path, "+experiment=known_circuit_eap", "method=edge_patching", 'method.edges=["input->m0","m0->logits"]',
                  "method.expected=null", "task.n_prompts=8")
    edges = pd.read_csv(out / "edges.csv")
    assert set(edges["edge"]) == {"input->m0", "m0->logits"} and edges["score"].notna().all() and not (out / "circuit.json").exists()
    assert len(pd.read_csv(out / "results.csv")) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["edges_scored"] == manifest["edges_selected"] == 2 and manifest["n_edges_in_graph"] == 110
    log = (out / "hydra_app.log").read_text()
    assert "2 of the model's 110 edges scored; 2 selected by method.edges" in log and "shard" not in log
    assert "figures/edge_scores.png" in manifest["files"]


def test_edge_patching_of_a_sample_writes_baselines_and_its_scores(tmp_path):
    """A sample: the scored edges only, baselines (every edge = the clean run, none = the corrupted run), the
    figure of its scores; the scores equal the full run's."""
    from circuitlab.models import loading

    sampled = run_cli(tmp_path / "sample", "+experiment=known_circuit_eap", "method=edge_patching", "method.sample=30", "task.n_prompts=8")
    manifest = json.loads((sampled / "manifest.json").read_text())
    edges = pd.read_csv(sampled / "edges.csv").set_index("edge")
    assert len(edges) == 30 and manifest["edges_scored"] == 30 and "auroc" not in manifest
    assert "figures/edge_scores.png" in manifest["files"] and "figures/circuit.png" not in manifest["files"]
    assert "30 selected by method.sample=30 (seed 0)" in (sampled / "hydra_app.log").read_text()
    dataset = torch.load(sampled / "dataset.pt")
    model = loading.load_model(cli.compose_config(["+experiment=known_circuit_eap"]).model)
    rows = torch.arange(len(dataset["answer_tokens"]))
    with torch.no_grad():
        clean, corrupted = (logit_diff(model(dataset[f"{kind}_tokens"])[rows, dataset["lengths"] - 1], dataset["answer_tokens"],
                                       dataset["wrong_tokens"]).mean().item() for kind in ("clean", "corrupted"))
    assert manifest["baselines"]["clean"]["logit_diff"] == pytest.approx(clean, abs=ATOL)
    assert manifest["baselines"]["corrupted"]["logit_diff"] == pytest.approx(corrupted, abs=ATOL)
    whole = pd.read_csv(run_cli(tmp_path / "whole", "+experiment=known_circuit_eap", "method=edge_patching", "task.n_prompts=8",
                                "figures=false") / "edges.csv").set_index("edge")
    assert torch.allclose(torch.tensor(edges["score"].values), torch.tensor(whole.loc[edges.index, "score"].values), atol=1e-6)


def test_post_norm_models_are_additive_and_run(tmp_path):
    """Gemma-2 / Gemma 3 (norms before and after) and OLMo-2 (after only) pass the additivity check: a head's output
    is its share of the normalised attention output (edges/hooks.py); what is still not additive is refused in one
    line (shortformer position embeddings, a post-norm that is not an RMS norm). An EAP run on an OLMo-2 checkpoint
    (model=local): the full circuit's logit difference is the clean run's, the empty one's the corrupted run's."""
    from types import SimpleNamespace

    from circuitlab.edges.hooks import check_additive
    from circuitlab.errors import CircuitlabError
    from tests import hf_fixtures

    check_additive(SimpleNamespace(use_normalization_before_and_after=True, original_architecture="Gemma2ForCausalLM", normalization_type="RMSPre"))
    check_additive(SimpleNamespace(use_normalization_before_and_after=False, original_architecture="Olmo2ForCausalLM", normalization_type="RMS"))
    for refused, says in ((dict(positional_embedding_type="shortformer"), "shortformer"),
                          (dict(use_normalization_before_and_after=True, normalization_type="LN"), "RMS post-norms only")):
        with pytest.raises(CircuitlabError, match=says) as err:
            check_additive(SimpleNamespace(model_name="m", **refused))
        assert "\n" not in str(err.value)
    path = hf_fixtures.build("olmo2", tmp_path / "olmo2")
    out = run_cli(tmp_path, "+experiment=ioi_eap", "model=local", f"model.path={path}", "task.n_prompts=4", "figures=false",
                  "method.curve=[100]")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["full_logit_diff"] == pytest.approx(manifest["baselines"]["clean"]["logit_diff"], abs=1e-4)
    assert manifest["empty_logit_diff"] == pytest.approx(manifest["baselines"]["corrupted"]["logit_diff"], abs=1e-4)
    assert abs(manifest["baselines"]["clean"]["logit_diff"] - manifest["baselines"]["corrupted"]["logit_diff"]) > 0.1
    curve = pd.read_csv(out / "faithfulness.csv").set_index("ranking")
    assert curve.loc[["signed", "absolute"], "faithfulness"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_eap_equals_auto_circuit_when_installed(model, pairs):
    """auto-circuit 1.0.1's EAP (`mask_gradient_prune_scores`, mask_val=0; bench extra, `make bench` installs it)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    peer = pytest.importorskip("autocircuit_peer")
    try:
        peer.import_auto_circuit()
    except ImportError as err:
        pytest.skip(f"auto-circuit is not installed ({err}); `make bench` installs it")
    graph = EdgeGraph.of(model.cfg)
    theirs = peer.autocircuit_eap(model, pairs.clean_tokens, pairs.corrupted_tokens, pairs.answer_tokens, pairs.wrong_tokens)
    ours = attribution.edge_scores(model, pairs, graph, "patching")
    assert set(theirs) == set(graph.edge_names)
    # theirs: grad . (corrupted - clean); ours: minus it (the drop of the metric)
    assert max(abs(float(ours[s, r]) + theirs[graph.edge_name(s, r)]) for s, r in graph.edges) < ATOL


def test_masked_forwards_split_prompts_and_circuits_under_a_small_budget(model, pairs):
    graph = EdgeGraph.of(model.cfg)
    sources = cf.prepare(model, pairs, graph, "mean", pairs.n_pairs)
    masks = torch.stack([circuits.top_n(graph, torch.rand(graph.real.shape, generator=torch.Generator().manual_seed(i)), 30 * i) for i in range(4)])
    whole, one = masked.circuits_logit_diff(model, pairs, graph, sources, masks)
    split, many = masked.circuits_logit_diff(model, pairs, graph, sources, masks, memory_budget_mb=1)
    assert one == 1 and many > 1 and torch.allclose(whole, split, atol=1e-5)


def test_unquoted_edge_names_get_a_hint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "+experiment=known_circuit_eap", "method.expected=[m0->a1.h0<v>]", f"run.dir={tmp_path / 'x'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "quote values with < or >" in err[0]
