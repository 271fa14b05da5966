"""Figures of the edge methods, from the run dir's CSVs alone (pandas + plotnine; no torch):
- `faithfulness_curve.png`: MIB's curve, faithfulness against the percentage of edges kept, signed and absolute
  rankings, with the circuit of circuit.json marked;
- `circuit.png`: the circuit as a layered graph (input at the bottom, logits at the top, heads and the MLP of each
  layer side by side); edge width = |score|, colour = sign.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import save


def edge_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    run_dir = Path(out_dir).parent
    experiment, method = results["experiment"].iloc[0], results["method"].iloc[0]
    written = []
    curve_file = run_dir / "faithfulness.csv"
    if curve_file.exists():
        written += faithfulness_curve(pd.read_csv(curve_file), out_dir, f"{experiment} ({method})")
    edges_file = run_dir / "edges.csv"
    if edges_file.exists():
        edges = pd.read_csv(edges_file)
        if edges["in_circuit"].astype(str).str.lower().eq("true").any():
            written += circuit_graph(edges, out_dir, f"{experiment} ({method})")
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
        + p9.labs(x="edges kept (% of the model's, log scale)", y="faithfulness (1 = the whole model, 0 = every edge ablated)",
                  color="circuits ranked by", title=f"{title}: faithfulness of top-scoring circuits")
        + p9.theme_minimal()
    )
    if len(chosen) and pd.notna(chosen["faithfulness"].iloc[0]):
        row = chosen.iloc[0]
        n_edges = int(row["edges_kept"])
        label = pd.DataFrame({"x": [0.1], "y": [float(row["faithfulness"])],
                              "text": [f"circuit.json: {n_edges} edges, faithfulness {float(row['faithfulness']):.2f}"]})
        plot += p9.geom_hline(yintercept=float(row["faithfulness"]), linetype="dotted", color="#238b45")
        plot += p9.geom_text(p9.aes("x", "y", label="text"), data=label, inherit_aes=False, ha="left", va="bottom", size=8, color="#238b45")
    return save(plot, out_dir, "faithfulness_curve", width=7, height=4.5)


def _node_xy(node: str, n_heads: int, n_layers: int) -> tuple[float, float]:
    """Layer on the y axis (input below layer 0, logits above the last); heads then the MLP along x."""
    if node == "input":
        return (n_heads + 1) / 2, -1.0
    if node == "logits":
        return (n_heads + 1) / 2, float(n_layers)
    base = node.split("<")[0]
    if base.startswith("m"):
        return float(n_heads + 1), float(base[1:]) + 0.5
    layer, head = base[1:].split(".h")
    return float(head), float(layer)


def circuit_graph(edges: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    kept = edges[edges["in_circuit"].astype(str).str.lower() == "true"].copy()
    names = pd.concat([edges["sender"], edges["receiver"].str.split("<").str[0]])
    heads = [int(n.split(".h")[1]) for n in names if n.startswith("a")]
    layers = [int(n[1:].split(".")[0]) for n in names if n[0] in "am" and n != "input"]
    n_heads, n_layers = (max(heads) + 1 if heads else 1), (max(layers) + 1 if layers else 1)
    xy = lambda n: _node_xy(n, n_heads, n_layers)  # noqa: E731
    kept["x"], kept["y"] = zip(*[xy(n) for n in kept["sender"]])
    kept["xend"], kept["yend"] = zip(*[xy(n) for n in kept["receiver"]])
    kept["sign"] = kept["score"].map(lambda v: "carries the clean answer (+)" if v >= 0 else "works against it (-)")
    kept["width"] = kept["score"].abs()
    kept["input"] = kept["receiver"].str.extract(r"<(\w)>")[0].fillna("")
    nodes = pd.DataFrame({"node": pd.unique(pd.concat([kept["sender"], kept["receiver"].str.split("<").str[0]]))})
    nodes["x"], nodes["y"] = zip(*[xy(n) for n in nodes["node"]])
    plot = (
        p9.ggplot()
        + p9.geom_segment(p9.aes("x", "y", xend="xend", yend="yend", color="sign", size="width"), data=kept, alpha=0.7)
        + p9.geom_label(p9.aes("x", "y", label="node"), data=nodes, size=7)
        + p9.scale_color_manual(values={"carries the clean answer (+)": "#b2182b", "works against it (-)": "#2166ac"})
        + p9.scale_size_continuous(range=(0.4, 3))
        + p9.scale_y_continuous(breaks=list(range(-1, n_layers + 1)), labels=["input", *[f"layer {l}" for l in range(n_layers)], "logits"])
        + p9.labs(x="head (MLP at the right)", y="", color="edge", size="|score|",
                  title=f"{title}: circuit of {len(kept)} edges (q / k / v inputs drawn into their head)")
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_blank())
    )
    return save(plot, out_dir, "circuit", width=8, height=max(4, 1 + 0.8 * (n_layers + 2)))
