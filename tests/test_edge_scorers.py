"""The EAP-family scorers of issue 26 (EAP-IG over activations, MIB's reference arithmetic of it, clean-corrupted,
node and neuron scores, the `mean-positional` counterfactual) against the plain hook-based reference of
tests/scorer_reference.py on every additive architecture of the test matrix, and their run through the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from circuitlab.config import ModelConfig
from circuitlab.edges import attribution
from circuitlab.edges import counterfactual as cf
from circuitlab.edges.graph import EdgeGraph
from circuitlab.methods.eap.config import EAPConfig
from circuitlab.models import hf_checkpoint, loading
from tests import edge_reference, hf_fixtures, scorer_reference
from tests.cli_refusal import refused
from tests.conftest import ioi_pairs
from tests.test_edges import sample_edges

ATOL = 1e-4


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """arch -> the tiny random checkpoint of tests/hf_fixtures.py, loaded as `model=local` loads it."""
    models = {}
    processing = {flag: getattr(ModelConfig(), flag) for flag in loading.PROCESSING_FLAGS}

    def get(arch: str):
        if arch not in models:
            path = hf_fixtures.build(arch, tmp_path_factory.mktemp(arch))
            models[arch] = hf_checkpoint.load_checkpoint(path, dtype=torch.float32, processing=processing)
        return models[arch]

    return get


def close(ours, reference, what) -> None:
    ours, reference = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    assert torch.allclose(ours, reference, atol=ATOL, rtol=1e-4), (what, float((ours - reference).abs().max()))


@pytest.mark.parametrize("arch", hf_fixtures.ARCHITECTURES)
def test_scorers_equal_plain_reference(zoo, arch):
    """Every integration's sampled edge scores and every node's per-dimension scores = the plain reference (per
    run: TransformerLens' split hooks, the component's output replaced by its interpolation, weights
    differentiable); EAP-IG over activations with one step = EAP; a node's score = the sum of its edges'."""
    model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=3)
    graph = EdgeGraph.of(model.cfg)
    edges = sample_edges(graph, 10, seed=2)
    names = [graph.edge_name(s, r) for s, r in edges]
    for integration, steps, counterfactual in (("inputs", 2, "patching"), ("clean-corrupted", 1, "patching"),
                                               ("activations", 2, "patching"), ("activations-mib", 2, "mean-positional")):
        ours = attribution.attribute(model, pairs, graph, counterfactual, integration, steps, neurons=True)
        edge_ref, neuron_ref = scorer_reference.scores(model, pairs, names, integration, steps, counterfactual)
        close([float(ours.edges[s, r]) for s, r in edges], edge_ref, (arch, integration, "edges"))
        close(ours.neurons, torch.stack([neuron_ref[name] for name in graph.senders]), (arch, integration, "neurons"))
        close(ours.neurons.sum(1), ours.edges.double().sum(1), (arch, integration, "node = its edges"))
    eap = attribution.attribute(model, pairs, graph, "patching", "clean", neurons=True)
    one_step = attribution.attribute(model, pairs, graph, "patching", "activations", 1, neurons=True)
    assert torch.allclose(one_step.edges, eap.edges, atol=1e-6) and torch.allclose(one_step.neurons, eap.neurons, atol=1e-6)


def test_batches_add_up(zoo):
    """Prompts scored in batches (the memory budget's, or method.batch_size) give the same edge and neuron scores as
    one batch, for every integration; a budget that holds one prompt at a time holds fewer over activations."""
    model = zoo("llama")
    pairs = ioi_pairs(model, n_prompts=5)
    graph = EdgeGraph.of(model.cfg)
    for integration in ("clean-corrupted", "activations", "activations-mib"):
        whole = attribution.attribute(model, pairs, graph, "mean-positional" if integration == "activations-mib" else "patching",
                                      integration, 2, neurons=True)
        parts = attribution.attribute(model, pairs, graph, "mean-positional" if integration == "activations-mib" else "patching",
                                      integration, 2, batch_size=2, neurons=True)
        assert torch.allclose(whole.edges, parts.edges, atol=1e-6) and torch.allclose(whole.neurons, parts.neurons, atol=1e-6)
    budget = lambda **kw: attribution.prompts_per_backward(model, graph, pairs.width, 16, **kw)  # noqa: E731
    assert budget(integration="activations", neurons=True) < budget(integration="activations") < budget()


def test_definitions_differ_where_they_should(zoo):
    """The scorers are not one another: on GPT-2's shape, two IG steps over activations differ from over inputs and
    from MIB's averaging over every run; MIB's arithmetic with one step is not EAP, ours is."""
    model = zoo("gpt2")
    pairs = ioi_pairs(model, n_prompts=3)
    graph = EdgeGraph.of(model.cfg)
    score = lambda integration, steps: attribution.attribute(model, pairs, graph, "patching", integration, steps).edges  # noqa: E731
    eap, acts, inputs, mib = score("clean", 1), score("activations", 2), score("inputs", 2), score("activations-mib", 2)
    gap = lambda a, b: float((a - b).abs().max())  # noqa: E731
    scale = float(eap.abs().max())
    assert gap(acts, inputs) > 1e-3 * scale and gap(acts, mib) > 1e-3 * scale and gap(acts, eap) > 1e-3 * scale
    assert gap(score("activations-mib", 1), eap) > 1e-3 * scale and gap(score("activations", 1), eap) < 1e-6


def test_mean_positional_is_the_per_position_mean(zoo):
    """`mean-positional` (MIB's per-position mean over the clean prompts) gives the same sources as `mean`, and exact
    edge patching and the masked forward take it: one edge's patch = the two-forward reference with the mean."""
    from circuitlab.edges import masked
    from circuitlab.edges.patching import patch_edges

    model = zoo("llama")
    pairs = ioi_pairs(model, n_prompts=4)
    graph = EdgeGraph.of(model.cfg)
    mean, positional = (cf.prepare(model, pairs, graph, kind, 2) for kind in ("mean", "mean-positional"))
    assert positional.kind == "mean-positional" and torch.equal(mean.mean, positional.mean)
    edges = sample_edges(graph, 4, seed=3)
    exact, _ = patch_edges(model, pairs, graph, "mean-positional", edges)
    reference = [edge_reference.patch_edge(model, pairs, graph.edge_name(s, r), "mean") for s, r in edges]
    close(exact, reference, "edge patching, mean-positional")
    circuits = torch.stack([torch.zeros_like(graph.real), graph.real])
    for sources in (mean, positional):
        values, _ = masked.circuits_logit_diff(model, pairs, graph, sources, circuits)
        close(values, masked.circuits_logit_diff(model, pairs, graph, mean, circuits)[0], "masked forward")


def test_node_circuits_equal_patching_the_other_nodes(zoo):
    """A node circuit (every edge out of the kept nodes, nodes.node_circuit) in the masked forward = one plain
    forward in which every other node's output (the input, a head's result, an MLP's output) is its corrupted
    run's; the node curve's rows are those circuits."""
    from circuitlab.edges import masked, nodes

    model = zoo("gpt2")
    pairs = ioi_pairs(model, n_prompts=4)
    graph = EdgeGraph.of(model.cfg)
    node_scores = torch.randn(len(graph.senders), generator=torch.Generator().manual_seed(4))
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    evaluate = lambda masks: masked.circuits_logit_diff(model, pairs, graph, sources, masks)[0]  # noqa: E731
    table, found = nodes.node_curve(graph, node_scores, [10, 50, 100], evaluate, empty=-1.0, full=2.0)
    assert list(table["nodes_kept"]) == [int(p / 100 * len(graph.senders)) for p in (10, 50, 100)] * 2
    assert table["faithfulness"].tolist() == pytest.approx(((table["logit_diff"] + 1) / 3).tolist())
    for n, absolute in ((5, True), (9, False)):
        circuit = nodes.node_circuit(graph, node_scores, n, absolute)
        kept = {graph.senders[s] for s in range(len(graph.senders)) if circuit[s].any()}
        ranked = sorted(range(len(graph.senders)), key=lambda s: -(abs(float(node_scores[s])) if absolute else float(node_scores[s])))
        assert kept == {graph.senders[s] for s in ranked[:n]} and torch.equal(circuit, graph.real & circuit.any(1, keepdim=True))
        value = float(evaluate(circuit[None])[0])
        close(value, scorer_reference.node_patched(model, pairs, set(graph.senders) - kept), ("node circuit", n, absolute))
    close(float(table["logit_diff"].iloc[2]), float(evaluate(graph.real[None])[0]), "every node = the clean run")


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "llama", "gemma2", "olmo2"])
def test_neuron_circuits(zoo, arch):
    """Neuron circuits (neuron_circuits.py): whole senders kept = the masked forward's node circuit (every edge out
    of them; H1's engine), nothing / everything = the corrupted / clean run, and random dimensions kept = one plain
    forward taking every other dimension of each sender's output from the corrupted run (pre-norm models)."""
    from circuitlab.edges import masked, nodes
    from circuitlab.edges.neuron_circuits import neuron_circuits_logit_diff

    model = zoo(arch)
    pairs = ioi_pairs(model, n_prompts=3)
    graph = EdgeGraph.of(model.cfg)
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    generator = torch.Generator().manual_seed(5)
    node_scores = torch.randn(len(graph.senders), generator=generator)
    whole = [nodes.node_circuit(graph, node_scores, n, True) for n in (3, 7)]
    keep = torch.stack([torch.zeros(len(graph.senders), model.cfg.d_model, dtype=torch.bool),
                        torch.ones(len(graph.senders), model.cfg.d_model, dtype=torch.bool)]
                       + [circuit.any(1)[:, None].expand(-1, model.cfg.d_model) for circuit in whole]
                       + [torch.rand(len(graph.senders), model.cfg.d_model, generator=generator) < p for p in (0.3, 0.8)])
    ours = neuron_circuits_logit_diff(model, pairs, graph, sources, keep, memory_budget_mb=1)  # a few circuits per forward
    edges = masked.circuits_logit_diff(model, pairs, graph, sources, torch.stack([torch.zeros_like(graph.real), graph.real, *whole]))[0]
    close(ours[:4], edges, (arch, "empty, full, node circuits"))
    if arch not in hf_fixtures.POST_NORM:
        for i in (4, 5):
            close(float(ours[i]), scorer_reference.neuron_patched(model, pairs, dict(zip(graph.senders, keep[i]))), (arch, "random dimensions"))


def run_cli(out, *overrides: str):
    from circuitlab import cli

    cli.main(["run", "+experiment=known_circuit_eap", "task.n_prompts=8", "figures=false", "progress=false", *overrides, f"run.dir={out}"])
    return out


def test_node_and_neuron_levels_through_the_cli(tmp_path, capsys):
    """method.level=node writes nodes.csv (one row per sender, ranked by |score|) and the node scores in the
    tensors; level=neuron one row per sender and dimension; eap's gradient_at=clean-corrupted and eap_ig's
    ig_over=activations run; bad values are refused in one line naming the field."""
    import pandas as pd

    out = run_cli(tmp_path / "node", "method=eap_ig", "method.ig_over=activations", "method.ig_steps=2", "method.level=node")
    nodes = pd.read_csv(out / "nodes.csv")
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(nodes.columns) == ["node", "score", "rank"] and list(nodes["rank"]) == list(range(1, len(nodes) + 1))
    assert manifest["ig_over"] == "activations" and manifest["level"] == "node" and manifest["node_cpr"] is not None
    curve = pd.read_csv(out / "node_faithfulness.csv")
    assert set(curve["ranking"]) == {"signed", "absolute"} and curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
    tensors = torch.load(out / "results.pt")
    assert torch.allclose(torch.tensor(sorted(nodes["score"])), tensors["node_scores"].sort().values, atol=1e-5)
    edges = pd.read_csv(out / "edges.csv")
    first = nodes.iloc[0]
    assert abs(edges[edges["sender"] == first["node"]]["score"].sum() - first["score"]) < 1e-4
    out = run_cli(tmp_path / "neuron", "method=eap", "method.gradient_at=clean-corrupted", "method.level=neuron")
    neurons = pd.read_csv(out / "nodes.csv")
    tensors = torch.load(out / "results.pt")
    assert list(neurons.columns) == ["node", "neuron", "score", "rank"] and neurons["neuron"].max() + 1 == tensors["neuron_scores"].shape[1]
    assert torch.allclose(tensors["neuron_scores"].sum(1), tensors["node_scores"]) and len(neurons) == tensors["neuron_scores"].numel()
    curve = pd.read_csv(out / "neuron_faithfulness.csv")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["neuron_cpr"] is not None and manifest["neuron_cmd"] is not None and not (out / "node_faithfulness.csv").exists()
    assert list(curve["neurons_kept"][:10]) == [int(p / 100 * len(neurons)) for p in EAPConfig().curve]
    assert curve["faithfulness"].iloc[9] == pytest.approx(1.0, abs=1e-4) and curve["faithfulness"].iloc[-1] == pytest.approx(1.0, abs=1e-4)
    for method, override, allowed in (("eap_ig", "method.ig_over=embeddings", "method.ig_over"), ("eap", "method.level=heads", "method.level"),
                                      ("eap", "method.gradient_at=corrupted", "method.gradient_at"),
                                      ("eap", "method.gradient_at=clean-corrupted method.counterfactual=zero", "method.counterfactual")):
        err = refused(["run", "+experiment=known_circuit_eap", f"method={method}", *override.split(), f"run.dir={tmp_path / 'bad'}"], capsys)
        assert allowed in err and not (tmp_path / "bad").exists()
