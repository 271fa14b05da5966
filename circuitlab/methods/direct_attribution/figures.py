"""Logit lens and direct logit attribution: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import cell_text, heatmap, save


def direct_attribution_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 001's pictures: the logit lens (the accumulated residual stream, a line over the stream's order), the
    per-layer decomposition (one bar per component: they are separate terms, not a trajectory), and per-head direct
    attribution as a layer x head heatmap."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    short = {"resid_pre": "pre", "resid_mid": "mid", "resid_post": "post", "attn_out": "attn", "mlp_out": "mlp", "embed": "embed", "pos_embed": "pos"}
    for metric, stem, title, streams in (
        ("logit_lens", "logit_lens", "logit lens (accumulated residual stream)", None),
        ("dla", "layer_attribution", "direct attribution per layer", ("embed", "pos_embed", "attn_out", "mlp_out")),
    ):
        df = results[results["metric"] == metric].copy()
        if streams is not None:
            df = df[df["stream"].isin(streams)]
        if not len(df):
            continue
        df["point"] = [f"{short[s_]} {l}" if s_ not in ("embed", "pos_embed") else short[s_] for s_, l in zip(df["stream"], df["layer"])]
        df["point"] = pd.Categorical(df["point"], categories=list(dict.fromkeys(df["point"])), ordered=True)
        df["label"] = df["value"].map(cell_text)
        nudge = 0.04 * max(1.0, float(df["value"].abs().max()))
        if metric == "logit_lens":  # one quantity read layer after layer: a trajectory
            marks = [p9.geom_line(color="#08519c"), p9.geom_point(color="#08519c", size=2)]
            x_label = "residual stream, in order"
        else:  # separate components, each its own share of the logit difference: bars, not a line
            df["sign"] = df["value"].map(lambda v: "positive" if v >= 0 else "negative")
            marks = [p9.geom_col(p9.aes(fill="sign"), show_legend=False), p9.scale_fill_manual(values={"positive": "#b2182b", "negative": "#2166ac"})]
            x_label = "component (the bars and manifest.json's constant\nsum to the measured logit difference)"
        df["label_y"] = df["value"] + df["value"].map(lambda v: nudge if v >= 0 else -nudge)
        plot = (
            p9.ggplot(df, p9.aes("point", "value", group=1))
            + p9.geom_hline(yintercept=0, color="grey")
            + marks
            + p9.geom_text(p9.aes(y="label_y", label="label"), size=7)
            + p9.labs(x=x_label, y="logit difference", title=f"{experiment}: {title}")
            + p9.theme_minimal()
            + p9.theme(axis_text_x=p9.element_text(rotation=45, ha="right"))
        )
        written += save(plot, out_dir, stem, max(6.0, 0.5 * df["point"].nunique() + 2), 3.5)
    heads = results[(results["metric"] == "dla") & (results["stream"] == "head")].copy()
    if len(heads):
        heads["head_label"] = heads["head"].astype(str)
        heads["panel"] = "direct logit attribution"
        plot, w, h = heatmap(heads, "head_label", "layer", "panel", f"{experiment}: per-head direct logit attribution",
                             "logit diff", "head", "layer")
        written += save(plot, out_dir, "head_attribution", w, h)
    return written
