"""Figures of the edge methods, from the run dir's CSVs alone (pandas + plotnine; no torch):
- `faithfulness_curve.png`: MIB's curve, faithfulness against the percentage of edges kept, signed and absolute
  rankings, with the circuit of circuit.json marked;
- `circuit.png`: the circuit as a layered graph (input at the bottom, logits at the top, heads and the MLP of each
  layer side by side); edge width = |score|, colour = sign;
- `edge_scores.png` (edges/scored_figure.py) when only some edges were scored: the largest |scores|.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.edges.scored_figure import scored_edges
from circuitlab.plotting import MAX_INCHES, save
from circuitlab.runfiles import read_table


def edge_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    run_dir = Path(out_dir).parent
    experiment, method = results["experiment"].iloc[0], results["method"].iloc[0]
    written = []
    curve_file = run_dir / "faithfulness.csv"
    if curve_file.exists():
        written += faithfulness_curve(read_table(curve_file), out_dir, f"{experiment} ({method})")
    edges_file = run_dir / "edges.csv"
    if edges_file.exists():
        edges = read_table(edges_file)
        if edges["in_circuit"].astype(str).str.lower().eq("true").any():
            written += circuit_graph(edges, out_dir, f"{experiment} ({method})")
        elif not curve_file.exists():  # only some edges scored (a sample, a list, a shard): no circuit was cut
            written += scored_edges(edges, out_dir, f"{experiment} ({method})")
    return written


def faithfulness_curve(table: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    curve = table[table["ranking"].isin(["signed", "absolute"])].copy()
    curve["ranking"] = curve["ranking"].map({"signed": "signed scores (CPR)", "absolute": "|scores| (CMD)"})
    chosen = table[table["ranking"] == "circuit"].copy()
    plot = (
        p9.ggplot(curve, p9.aes("percent", "faithfulness", color="ranking"))
        + p9.geom_hline(yintercept=1, linetype="dashed", color="grey")
        + p9.geom_hline(yintercept=0, color="lightgrey")
        + p9.geom_line()
        + p9.geom_point(size=2)
        + p9.scale_x_log10(breaks=[0.1, 1, 10, 100], labels=["0.1%", "1%", "10%", "100%"])
        + p9.labs(x="edges kept (% of the model's, log scale)", y="faithfulness", color="circuits ranked by",
                  title=f"{title}: faithfulness of top-scoring circuits",
                  subtitle="faithfulness: the circuit's logit difference, 1 = the whole model's, 0 = every edge ablated")
        + p9.theme_minimal()
    )
    if len(chosen) and pd.notna(chosen["faithfulness"].iloc[0]):
        row = chosen.iloc[0]
        n_edges = int(row["edges_kept"])
        label = pd.DataFrame({"x": [0.1], "y": [float(row["faithfulness"])],
                              "text": [f"circuit.json: {n_edges} edges, faithfulness {float(row['faithfulness']):.2f}"]})
        plot += p9.geom_hline(yintercept=float(row["faithfulness"]), linetype="dotted", color="#238b45")
        plot += p9.geom_text(p9.aes("x", "y", label="text"), data=label, inherit_aes=False, ha="left", va="bottom", size=8, color="#238b45")
    return save(plot, out_dir, "faithfulness_curve", width=8, height=4.8)


def node_place(node: str) -> tuple[str, int | None, int | None]:
    """(kind, layer, head) of a node name: input, logits, a<L>.h<H> (a head; a receiver's <q>/<k>/<v> dropped), m<L>."""
    base = node.split("<")[0]
    if base in ("input", "logits"):
        return base, None, None
    if base.startswith("m"):
        return "mlp", int(base[1:]), None
    layer, head = base[1:].split(".h")
    return "head", int(layer), int(head)


def circuit_graph(edges: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """The circuit as a layered graph: input at the bottom, logits at the top, one row per layer that holds a node
    of the circuit (layers without one are left out, so a 20-edge circuit of a 40-layer model stays small), heads
    by index along x and each layer's MLP at the right (with many heads, only the heads in the circuit get a
    column)."""
    kept = edges[edges["in_circuit"].astype(str).str.lower() == "true"].copy()
    names = pd.unique(pd.concat([kept["sender"], kept["receiver"].str.split("<").str[0]]))
    places = {n: node_place(n) for n in names}
    model_heads = [node_place(n)[2] for n in pd.concat([edges["sender"], edges["receiver"]]).unique() if node_place(n)[0] == "head"]
    n_heads = max(model_heads) + 1 if model_heads else 1
    used_heads = sorted({h for kind, _, h in places.values() if kind == "head"})
    columns = list(range(n_heads)) if n_heads <= 24 else used_heads  # with many heads, only the circuit's
    mlp_x = float(len(columns) + 0.5)
    layers = sorted({l for kind, l, _ in places.values() if l is not None})
    row = {l: i + 1 for i, l in enumerate(layers)}
    top = len(layers) + 1

    def xy(node: str) -> tuple[float, float]:
        kind, layer, head = node_place(node)
        if kind == "input":
            return (mlp_x - 0.5) / 2, 0.0
        if kind == "logits":
            return (mlp_x - 0.5) / 2, float(top)
        if kind == "mlp":
            return mlp_x, row[layer] + 0.3  # the MLP reads the layer's heads: drawn a little above them
        return float(columns.index(head)), float(row[layer])

    kept["x"], kept["y"] = zip(*[xy(n) for n in kept["sender"]]) if len(kept) else ((), ())
    kept["xend"], kept["yend"] = zip(*[xy(n) for n in kept["receiver"]]) if len(kept) else ((), ())
    kept["sign"] = kept["score"].map(lambda v: "carries the clean answer (+)" if v >= 0 else "works against it (-)")
    kept["width"] = kept["score"].abs()
    nodes = pd.DataFrame({"node": names})
    nodes["x"], nodes["y"] = zip(*[xy(n) for n in nodes["node"]])
    row_h = min(0.7, max(0.3, (MAX_INCHES - 2.0) / (top + 1)))
    col_w = min(0.8, max(0.55, (MAX_INCHES - 4.0) / (len(columns) + 2)))
    plot = (
        p9.ggplot()
        + p9.geom_segment(p9.aes("x", "y", xend="xend", yend="yend", color="sign", size="width"), data=kept, alpha=0.7)
        + p9.geom_label(p9.aes("x", "y", label="node"), data=nodes, size=7)
        + p9.scale_color_manual(values={"carries the clean answer (+)": "#b2182b", "works against it (-)": "#2166ac"})
        + p9.scale_size_continuous(range=(0.4, 3))
        + p9.scale_y_continuous(breaks=list(range(0, top + 1)), labels=["input", *[f"layer {l}" for l in layers], "logits"],
                                expand=(0, 0.5))
        + p9.scale_x_continuous(breaks=[*range(len(columns)), mlp_x], labels=[*(f"h{h}" for h in columns), "MLP"], expand=(0, 0.7))
        + p9.labs(x="head (MLP at the right)" + ("" if len(columns) == n_heads else f"; only the circuit's {len(columns)} of {n_heads} heads"),
                  y="", color="edge", size="|score|", title=f"{title}: circuit of {len(kept)} edges",
                  subtitle="q / k / v inputs drawn into their head; layers without a node of the circuit left out"
                           if len(layers) < (max(layers) + 1 if layers else 0) else "q / k / v inputs drawn into their head")
        + p9.theme_minimal()
        + p9.theme(panel_grid_minor=p9.element_blank())
    )
    return save(plot, out_dir, "circuit", width=max(8.0, col_w * (len(columns) + 2) + 3.0), height=max(4.0, 1.6 + row_h * (top + 1)))
