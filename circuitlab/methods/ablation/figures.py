"""Ablations: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import save


def ablation_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 004's picture: the effect of ablating each node against the scale of the patched value, one line
    per node; coloured in / out of the circuit when one is declared (`method.circuit`)."""
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
            df["circuit"] = df["in_circuit"].map({True: "in circuit", False: "not in circuit"}).fillna("no node")
            aes = p9.aes("scale", "value", group="node", color="circuit")
            colours = p9.scale_color_manual(values={"in circuit": "#1a9850", "not in circuit": "#f46d43", "no node": "grey"})
        else:
            aes, colours = p9.aes("scale", "value", color="node"), None
        plot = (
            p9.ggplot(df, aes)
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_line()
            + p9.geom_point(size=1.5)
            + p9.labs(x="scale of the patched value", y=label, color="", title=f"{experiment}: ablation {metric} against scale")
            + p9.theme_minimal()
        )
        written += save(plot + colours if colours is not None else plot, out_dir, stem, 8, 4.5)
    return written
