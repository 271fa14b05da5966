"""An edge run's scores and circuits in the layout of MIB's circuit-track submissions (`method.export: [mib]`).

What MIB reads, and where we read it:
- hannamw/MIB-circuit-track README.md, "Submitting to the MIB Leaderboard": one folder per task and model, named
  `{task}_{model}` (e.g. `ioi_gpt2`, `arc-easy_llama3`), holding either one file of importance scores for every edge,
  or nine circuits, one with at most each of 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50 % of the edges; the example
  submission keeps the two kinds apart (`importances/pt/...`, `multiple_circuits/pt/...`).
- hannamw/EAP-IG src/eap/graph.py, `Graph.to_pt` / `Graph.from_pt` (and MIB_circuit_track/circuit_loading.py,
  `load_graph_from_pt`, which the leaderboard's evaluator mttk/MIB-circuit-track-autoeval uses): a torch file holding
  `cfg` (n_layers, n_heads, parallel_attn_mlp, d_model), `src_nodes` (input, then per layer a{L}.h0.. and m{L}),
  `dst_nodes` (per layer a{L}.h*<q>, <k>, <v>, m{L}; then logits), `edges_scores` and `edges_in_graph`
  (src x dst), `nodes_in_graph` (src). `Graph.from_model` fixes that order and which pairs are edges.
- MIB_circuit_track/utils.py (`COL_MAPPING`, `MODEL_NAME_TO_FULLNAME`): MIB's task and model names
  (ioi, mcqa, arithmetic-addition, ...; gpt2, qwen2.5, gemma2, llama3, interpbench); eval_submissions.py of the
  evaluator finds the task and model in the folder name.

What we write under the run dir (`mib/`):
- `mib/importances/pt/{task}_{model}/importances.pt`: every edge's score, `edges_in_graph` = the run's circuit;
- `mib/multiple_circuits/pt/{task}_{model}/circuit_{percent}.pt`: the nine circuits of the run's faithfulness curve
  at MIB's budgets, of the ranking the run chose (`method.absolute`: faithfulness.csv's `absolute` rows, else the
  `signed` ones), the same edges those rows evaluated (top int(percent x edges), then pruned: at most the budget).
Our graph is MIB's (graph.py), so the tensors are ours, placed by name; a model without MLPs gets MIB's MLP rows
and columns empty. The task and model folder names are MIB's where ours is one of MIB's (`MIB_TASKS`,
`MIB_MODELS`), else ours (the leaderboard only scores its own tasks and models).
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitlab.edges.graph import EdgeGraph

EXPORTS = ("mib",)
MIB_DIR = "mib"
MIB_BUDGETS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)  # % of edges: the nine circuits of a submission
MIB_TASKS = {"ioi": "ioi", "addition": "arithmetic-addition"}
MIB_MODELS = {"gpt2-small": "gpt2", "gpt2": "gpt2", "Qwen/Qwen2.5-0.5B": "qwen2.5", "qwen2.5-0.5b": "qwen2.5", "google/gemma-2-2b": "gemma2",
              "gemma-2-2b": "gemma2", "meta-llama/Llama-3.1-8B": "llama3", "llama-3.1-8b": "llama3", "interpbench": "interpbench"}


def folder_name(task: str, model: str, model_path: str | None = None) -> str:
    """`{task}_{model}` in MIB's names where it has them (a local model: its directory's name)."""
    if model == "local" and model_path:
        model = Path(str(model_path)).name
    return f"{MIB_TASKS.get(task, task).replace('_', '-')}_{MIB_MODELS.get(model, model).replace('_', '-')}"


def known_to_mib(task: str, model: str) -> bool:
    return task in MIB_TASKS and model in MIB_MODELS


def percent_name(percent: float) -> str:
    """0.1 -> '0.1', 2.0 -> '2' (as MIB's README writes its budgets)."""
    return f"{percent:g}"


def mib_graph(graph: EdgeGraph) -> EdgeGraph:
    """MIB's graph of the same model: always an MLP per layer."""
    return EdgeGraph(graph.n_layers, graph.n_heads, graph.parallel_attn_mlp, True, graph.d_model)


def _placement(graph: EdgeGraph, target: EdgeGraph) -> tuple[Tensor, Tensor]:
    senders = {name: i for i, name in enumerate(target.senders)}
    receivers = {name: i for i, name in enumerate(target.receivers)}
    return torch.tensor([senders[n] for n in graph.senders]), torch.tensor([receivers[n] for n in graph.receivers])


def graph_file(graph: EdgeGraph, scores: Float[Tensor, "sender receiver"], keep: Bool[Tensor, "sender receiver"]) -> dict:
    """One circuit (and every edge's score) in EAP-IG's `Graph.to_pt` layout."""
    target = mib_graph(graph)
    rows, cols = _placement(graph, target)
    edge_scores = torch.zeros(len(target.senders), len(target.receivers), dtype=torch.float32)
    in_graph = torch.zeros(len(target.senders), len(target.receivers), dtype=torch.bool)
    edge_scores[rows[:, None], cols[None, :]] = torch.nan_to_num(scores.float() * graph.real, nan=0.0)
    in_graph[rows[:, None], cols[None, :]] = keep & graph.real
    return {"cfg": target.config(), "src_nodes": list(target.senders), "dst_nodes": list(target.receivers), "edges_scores": edge_scores,
            "edges_in_graph": in_graph, "nodes_in_graph": in_graph.any(1)}


def export_files(folder: str, graph: EdgeGraph, scores: Tensor, keep: Tensor, budget_circuits: dict[float, Tensor]) -> dict[str, dict]:
    """The run dir's MIB files by relative path: the importances and one file per budget (`budget_circuits`:
    percent -> the curve's circuit)."""
    files = {f"{MIB_DIR}/importances/pt/{folder}/importances.pt": graph_file(graph, scores, keep)}
    for percent, circuit in budget_circuits.items():
        files[f"{MIB_DIR}/multiple_circuits/pt/{folder}/circuit_{percent_name(percent)}.pt"] = graph_file(graph, scores, circuit)
    return files


def export_run(run_dir: Path) -> list[Path]:
    """A finished edge run's MIB files (`circuitlab export-mib RUN_DIR`): its scores (results.pt), its circuit
    (edges.csv) and its curve's circuits at MIB's budgets recomputed from the scores by the run's own rule, checked
    against faithfulness.csv's edges kept; written under RUN_DIR/mib/. One line (CircuitlabError) when the run is
    not a finished edge run with every edge scored, or its curve lacks MIB's budgets or was cut from bootstrap
    resamples (not stored: rerun with method.export=[mib])."""
    from circuitlab import runfiles
    from circuitlab.edges import circuits
    from circuitlab.errors import CircuitlabError
    from circuitlab.storage import write_tensors

    run_dir = Path(run_dir)
    manifest = runfiles.check_run(run_dir, need_manifest=True)
    config = runfiles.read_json(run_dir / "run_config.json")
    method = config.get("method") or {}
    where = f"{runfiles.shown(run_dir)}: "
    if "edges.csv" not in (manifest.get("files") or []) or "faithfulness.csv" not in (manifest.get("files") or []):
        raise CircuitlabError(where + f"not an edge run with every edge scored (method={method.get('name')}: no edges.csv and faithfulness.csv)")
    if method.get("bootstrap"):
        raise CircuitlabError(where + f"its curve was cut from {method['bootstrap']} bootstrap resamples, which runs do not keep: rerun it with method.export=[mib]")
    curve = [float(p) for p in method.get("curve") or []]
    if any(p not in curve for p in MIB_BUDGETS):
        raise CircuitlabError(where + f"its method.curve {curve} lacks MIB's budgets {[percent_name(p) for p in MIB_BUDGETS]}")
    tensors = runfiles.read_tensors(run_dir / "results.pt", runfiles.record_of(manifest, "results.pt"))
    scores, real = tensors["scores"], tensors["edge_exists"]
    cfg = circuits_graph_config(runfiles.read_json(run_dir / "circuit.json"), real)
    graph = EdgeGraph(**cfg)
    edges = runfiles.read_table(run_dir / "edges.csv", runfiles.record_of(manifest, "edges.csv"))
    keep = torch.zeros_like(graph.real)
    for name in edges[edges["in_circuit"]]["edge"]:
        keep[graph.parse_edge(name, "edges.csv")] = True
    table = runfiles.read_table(run_dir / "faithfulness.csv", runfiles.record_of(manifest, "faithfulness.csv"))
    ranking, absolute = ("absolute", True) if method.get("absolute", True) else ("signed", False)
    budget_circuits = {}
    for percent in MIB_BUDGETS:
        n = circuits.edges_for_percent(graph, percent)
        if method.get("select") == "milp":
            from circuitlab.edges.selection import milp_circuit

            circuit = milp_circuit(graph, scores, n, absolute)
        else:
            circuit = circuits.select(graph, scores, "greedy" if method.get("select") == "greedy" else "topn", n, 0.0, absolute)
        row = table[(table["ranking"] == ranking) & (table["percent"] == percent)]
        if len(row) != 1 or int(row["edges_kept"].iloc[0]) != int(circuit.sum()):
            raise CircuitlabError(where + f"the {percent_name(percent)} % circuit recomputed from results.pt keeps {int(circuit.sum())} edges, "
                                  f"faithfulness.csv says {row['edges_kept'].tolist()} (changed since the run wrote them?)")
        budget_circuits[percent] = circuit
    task, model = config.get("task", {}).get("name", "task"), config.get("model", {})
    files = export_files(folder_name(task, model.get("name", "model"), model.get("path")), graph, scores, keep, budget_circuits)
    written = []
    for name, data in files.items():
        write_tensors(run_dir / name, data)
        written.append(run_dir / name)
    return written


def circuits_graph_config(graph_json: dict, real: Tensor) -> dict:
    """EdgeGraph's fields from circuit.json's cfg, with or without MLPs as results.pt's edge_exists shows."""
    cfg = graph_json.get("cfg") or {}
    n_layers, n_heads = int(cfg["n_layers"]), int(cfg["n_heads"])
    has_mlp = real.shape[0] == 1 + n_layers * (n_heads + 1)
    return {"n_layers": n_layers, "n_heads": n_heads, "parallel_attn_mlp": bool(cfg.get("parallel_attn_mlp", False)), "has_mlp": has_mlp,
            "d_model": int(cfg.get("d_model", 0))}
