"""Ablations: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import save

COLOURED = 12  # nodes drawn in colour and named; the others grey (a colour legend of 300 nodes helps nobody)


def end_labels(df: pd.DataFrame) -> pd.DataFrame:
    """One label at the right end of the lines: the nodes whose lines end at about the same value share it (so that
    the names stay readable where lines meet)."""
    last = df[df["scale"] == df["scale"].max()].sort_values("value")
    span = max(float(df["value"].max() - df["value"].min()), 1e-9)
    groups, current = [], []
    for _, row in last.iterrows():
        if current and row["value"] - current[0]["value"] > 0.04 * span:
            groups.append(current)
            current = []
        current.append(row)
    if current:
        groups.append(current)
    rows = []
    for group in groups:
        names = [str(r["node"]) for r in group]
        text = ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} +{len(names) - 3} more"
        rows.append({"scale": group[0]["scale"], "value": sum(r["value"] for r in group) / len(group), "text": text})
    return pd.DataFrame(rows)


def ablation_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 004's picture: the effect of ablating each node against the scale of the patched value, one line
    per node, each line named at its right end (nodes ending together share a name tag); with a declared circuit
    (`method.circuit`) the lines are solid in the circuit and dashed outside it."""
    experiment = results["experiment"].iloc[0]
    written = []
    for metric, stem, label in (("effect", "ablation_scales", "effect on the logit difference"),
                                ("output_change", "ablation_output_change", "share of outputs changed (InterpBench)")):
        df = results[results["metric"] == metric].copy()
        if not len(df):
            continue
        heads = df["heads"].fillna("")
        df["node"] = [f"{stream} {layer}" + (f".{h}" if h else "") for stream, layer, h in zip(df["stream"], df["layer"], heads)]
        df["node"] = pd.Categorical(df["node"], categories=list(dict.fromkeys(df["node"])), ordered=True)
        marked = "in_circuit" in df.columns and df["in_circuit"].notna().any()
        if marked:
            df["circuit"] = df["in_circuit"].map({True: "in circuit", False: "not in circuit"}).astype("object").fillna("no node")
            df["node"] = pd.Categorical([f"{n} *" if c == "in circuit" else str(n) for n, c in zip(df["node"], df["circuit"])],
                                        categories=list(dict.fromkeys(f"{n} *" if c == "in circuit" else str(n) for n, c in zip(df["node"], df["circuit"]))),
                                        ordered=True)
            aes = p9.aes("scale", "value", group="node", color="node", linetype="circuit")
        else:
            aes = p9.aes("scale", "value", group="node", color="node")
        scales = sorted(df["scale"].unique())
        span = float(max(scales) - min(scales)) or 1.0
        nodes = list(df["node"].cat.categories)
        strongest = set(df.groupby("node", observed=True)["value"].apply(lambda v: float(v.abs().max())).nlargest(COLOURED).index)
        circuit_nodes = set(df.loc[df["circuit"] == "in circuit", "node"]) if marked else set()
        coloured = strongest | circuit_nodes
        others = df[~df["node"].isin(coloured)]
        shown = df[df["node"].isin(coloured)].copy()
        shown["node"] = shown["node"].cat.remove_unused_categories()
        subtitle = (f"coloured and named: the {len(strongest)} nodes of largest |{metric}|{' and the circuit' if circuit_nodes else ''}; "
                    f"grey: the other {len(nodes) - len(coloured)}" if len(others) else None)
        plot = (
            p9.ggplot(shown, aes)
            + p9.geom_hline(yintercept=0, color="grey")
            + (p9.geom_line(p9.aes("scale", "value", group="node"), data=others, inherit_aes=False, color="#cccccc", size=0.3)
               if len(others) else p9.geom_blank())
            + p9.geom_line()
            + p9.geom_point(size=1.5)
            + p9.geom_text(p9.aes("scale", "value", label="text"), data=end_labels(shown), inherit_aes=False, ha="left",
                           nudge_x=0.02 * span, size=7)
            + p9.scale_x_continuous(breaks=scales, limits=(min(scales), max(scales) + 0.45 * span))
            + p9.labs(x="scale of the patched value", y=label, color="node" + (" (* in the circuit)" if marked else ""),
                      linetype="", title=f"{experiment}: ablation {metric} against scale", subtitle=subtitle)
            + p9.theme_minimal()
            + p9.theme(panel_grid_minor=p9.element_blank())
        )
        written += save(plot, out_dir, stem, 10, 5.4 if subtitle else 5)
    return written
