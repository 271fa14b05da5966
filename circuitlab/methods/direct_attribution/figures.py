"""Logit lens and direct logit attribution: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import heatmap, save


def direct_attribution_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 001's pictures: the logit lens (accumulated residual stream) and the per-layer decomposition as
    lines over the residual stream's order, and per-head direct attribution as a layer x head heatmap."""
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
        df["label"] = df["value"].map(lambda v: f"{v:.2f}")
        plot = (
            p9.ggplot(df, p9.aes("point", "value", group=1))
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_line(color="#08519c")
            + p9.geom_point(color="#08519c", size=2)
            + p9.geom_text(p9.aes(label="label"), nudge_y=0.04 * max(1.0, float(df["value"].abs().max())), size=7)
            + p9.labs(x="", y="logit difference", title=f"{experiment}: {title}")
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
