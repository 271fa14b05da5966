"""method.export=[mib] (circuitlab/edges/mib.py): the files read back in EAP-IG's Graph.to_pt layout, named as
MIB's README and EAP-IG's Graph.from_model name them, and the nine budget circuits are the ones the run's curve
evaluated (their masked logit difference equals faithfulness.csv's)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from circuitlab import cli
from circuitlab.edges import counterfactual as cf
from circuitlab.edges import mib
from circuitlab.edges.graph import EdgeGraph
from circuitlab.edges.masked import circuits_logit_diff
from circuitlab.models import loading
from circuitlab.plan import build_pairs
from tests.cli_refusal import refused

BUDGETS = ["0.1", "0.2", "0.5", "1", "2", "5", "10", "20", "50"]  # MIB's README: one circuit with at most each % of edges
OVERRIDES = ["+experiment=ioi_eap", "task.n_prompts=16", "figures=false", "method.export=[mib]"]


def eap_ig_names(n_layers: int, n_heads: int) -> tuple[list[str], list[str]]:
    """Source and destination node names in the order of EAP-IG's Graph.from_model / get_dst_nodes."""
    src = ["input"] + [name for layer in range(n_layers) for name in [f"a{layer}.h{h}" for h in range(n_heads)] + [f"m{layer}"]]
    dst = [name for layer in range(n_layers) for name in
           [f"a{layer}.h{h}<{x}>" for x in "qkv" for h in range(n_heads)] + [f"m{layer}"]] + ["logits"]
    return src, dst


def eap_ig_edges(n_layers: int, n_heads: int) -> set[tuple[str, str]]:
    """Every edge by name, as EAP-IG's Graph.from_model adds them (sequential attention and MLP)."""
    edges, stream = set(), ["input"]
    for layer in range(n_layers):
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        edges |= {(s, f"{head}<{x}>") for s in stream for head in heads for x in "qkv"}
        stream += heads
        edges |= {(s, f"m{layer}") for s in stream}
        stream.append(f"m{layer}")
    return edges | {(s, "logits") for s in stream}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("mib") / "run"
    cli.main(["run", *OVERRIDES, f"run.dir={out}", "progress=false"])
    return out


def test_files_and_names(exported):
    folder = "ioi_toy-ioi"  # MIB's `{task}_{model}`: ioi is MIB's task name, toy-ioi ours
    importances = torch.load(exported / "mib" / "importances" / "pt" / folder / "importances.pt")
    cfg = importances["cfg"]
    n_layers, n_heads = cfg["n_layers"], cfg["n_heads"]
    src, dst = eap_ig_names(n_layers, n_heads)
    assert (n_layers, n_heads, cfg["parallel_attn_mlp"]) == (2, 4, False) and cfg["d_model"] == 64
    assert importances["src_nodes"] == src and importances["dst_nodes"] == dst
    shape = (1 + n_layers * (n_heads + 1), n_layers * (3 * n_heads + 1) + 1)
    assert importances["edges_scores"].shape == importances["edges_in_graph"].shape == shape
    assert importances["nodes_in_graph"].shape == (shape[0],) and importances["edges_in_graph"].dtype == torch.bool
    edges = pd.read_csv(exported / "edges.csv")
    assert set(zip(edges["sender"], edges["receiver"])) == eap_ig_edges(n_layers, n_heads)
    s_index, d_index = {n: i for i, n in enumerate(src)}, {n: i for i, n in enumerate(dst)}
    rows, cols = [s_index[s] for s in edges["sender"]], [d_index[r] for r in edges["receiver"]]
    assert torch.allclose(importances["edges_scores"][rows, cols], torch.tensor(edges["score"].to_numpy(), dtype=torch.float32))
    assert float(importances["edges_scores"].abs().sum()) == pytest.approx(float(edges["score"].abs().sum()), rel=1e-5)  # non-edges 0
    chosen = importances["edges_in_graph"][rows, cols]
    assert chosen.tolist() == edges["in_circuit"].tolist() and int(importances["edges_in_graph"].sum()) == int(edges["in_circuit"].sum())
    circuit_files = sorted(p.name for p in (exported / "mib" / "multiple_circuits" / "pt" / folder).iterdir())
    assert circuit_files == sorted(f"circuit_{b}.pt" for b in BUDGETS)


def test_budget_circuits_are_the_curves(exported):
    """Each budget's circuit holds at most that % of the edges, the count faithfulness.csv's absolute row kept, and
    a masked forward of it (built here from the file's names) gives that row's logit difference."""
    cfg = cli.compose_config(OVERRIDES)
    model = loading.load_model(cfg.model)
    pairs = build_pairs(cfg, loading.load_tokenizer(cfg.model))
    graph = EdgeGraph.of(model.cfg)
    curve = pd.read_csv(exported / "faithfulness.csv")
    curve = curve[curve["ranking"] == "absolute"].set_index("percent")
    masks, expected = [], []
    for budget in BUDGETS:
        data = torch.load(exported / "mib" / "multiple_circuits" / "pt" / "ioi_toy-ioi" / f"circuit_{budget}.pt")
        keep = torch.zeros_like(graph.real)
        for i, j in data["edges_in_graph"].nonzero().tolist():
            keep[graph.parse_edge(f"{data['src_nodes'][i]}->{data['dst_nodes'][j]}", "test")] = True
        row = curve.loc[float(budget)]
        assert int(keep.sum()) == row["edges_kept"] <= int(float(budget) / 100 * graph.n_edges)
        masks.append(keep)
        expected.append(row["logit_diff"])
    assert sum(int(m.sum()) for m in masks) > 20  # the test compares real circuits, not only empty ones
    sources = cf.prepare(model, pairs, graph, "patching", pairs.n_pairs)
    values, _ = circuits_logit_diff(model, pairs, graph, sources, torch.stack(masks))
    assert values.tolist() == pytest.approx(expected, abs=1e-4)


def test_a_model_without_mlps_gets_mibs_empty_mlp_rows():
    graph = EdgeGraph(2, 2, has_mlp=False)
    scores = torch.arange(graph.real.numel(), dtype=torch.float32).view_as(graph.real) * graph.real + 1 * graph.real
    keep = torch.zeros_like(graph.real)
    keep[graph.parse_edge("input->a1.h0<v>", "t")] = keep[graph.parse_edge("a1.h0->logits", "t")] = True
    data = mib.graph_file(graph, scores, keep)
    src, dst = eap_ig_names(2, 2)
    assert data["src_nodes"] == src and data["dst_nodes"] == dst
    for s_name, s in zip(graph.senders, range(len(graph.senders))):
        for r_name, r in zip(graph.receivers, range(len(graph.receivers))):
            assert float(data["edges_scores"][src.index(s_name), dst.index(r_name)]) == float(scores[s, r])
    assert float(data["edges_scores"][[src.index("m0"), src.index("m1")]].abs().sum()) == 0
    assert float(data["edges_scores"][:, [dst.index("m0"), dst.index("m1")]].abs().sum()) == 0
    assert int(data["edges_in_graph"].sum()) == 2 and data["nodes_in_graph"].tolist() == [n in ("input", "a1.h0") for n in src]


@pytest.mark.parametrize("override, message", [
    ("method.export=[json]", "method.export"),
    ("method.curve=[1,10,100]", "MIB's budgets"),
])
def test_bad_export_settings_are_one_line(tmp_path, capsys, override, message):
    line = refused(["run", *OVERRIDES, override, f"run.dir={tmp_path / 'x'}"], capsys)
    assert message in line


def test_export_mib_of_a_finished_run_writes_the_same_files(exported, tmp_path, capsys):
    plain_run = tmp_path / "plain"
    cli.main(["run", *[o for o in OVERRIDES if not o.startswith("method.export")], f"run.dir={plain_run}", "progress=false"])
    assert not (plain_run / "mib").exists()
    cli.main(["export-mib", str(plain_run)])
    assert "wrote 10 files" in capsys.readouterr().out
    ours = sorted(p.relative_to(plain_run) for p in (plain_run / "mib").rglob("*.pt"))
    assert ours == sorted(p.relative_to(exported) for p in (exported / "mib").rglob("*.pt")) and len(ours) == 10
    for name in ours:
        a, b = torch.load(plain_run / name), torch.load(exported / name)
        assert a.keys() == b.keys() and a["cfg"] == b["cfg"] and a["src_nodes"] == b["src_nodes"] and a["dst_nodes"] == b["dst_nodes"]
        assert all(torch.equal(a[k], b[k]) for k in ("edges_scores", "edges_in_graph", "nodes_in_graph")), name


def test_export_mib_refuses_what_it_cannot_export(tmp_path, capsys):
    boot = tmp_path / "boot"
    cli.main(["run", *[o for o in OVERRIDES if not o.startswith("method.export")], "method.bootstrap=2", f"run.dir={boot}", "progress=false"])
    assert "bootstrap resamples" in refused(["export-mib", str(boot)], capsys) and not (boot / "mib").exists()
    assert "results.csv" in refused(["export-mib", str(tmp_path / "nothing")], capsys)
