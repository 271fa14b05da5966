"""Logit lens and direct logit attribution: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.heatmaps import heatmap
from circuitlab.plotting import MAX_INCHES, cell_text, chunks, paged_title, save, save_pages

DEPTH = {"resid_pre": 0.0, "resid_mid": 0.5, "resid_post": 1.0}  # where in layer L the residual stream is read
COMPONENT = {"embed": "embedding", "pos_embed": "positional embedding", "attn_out": "attention", "mlp_out": "MLP"}
COLOURS = {"embedding": "#7f7f7f", "positional embedding": "#bdbdbd", "attention": "#d95f02", "MLP": "#1b9e77"}
LABELLED = 8  # bars / points whose value is written: the largest |value| ones (all of them when there are few)
LAYERS_PER_PAGE = 80


def direct_attribution_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 001's pictures: the logit lens (the accumulated residual stream, a line over depth), the per-layer
    decomposition (bars per layer, attention and MLP side by side: separate terms, not a trajectory), and per-head
    direct attribution as a layer x head heatmap."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    lens = results[results["metric"] == "logit_lens"]
    if len(lens):
        plot, width, height = logit_lens(lens, experiment)
        written += save(plot, out_dir, "logit_lens", width, height)
    layers = results[(results["metric"] == "dla") & results["stream"].isin(list(COMPONENT))]
    if len(layers):
        written += save_pages(layer_bars(layers, experiment), out_dir, "layer_attribution")
    heads = results[(results["metric"] == "dla") & (results["stream"] == "head")].copy()
    if len(heads):
        heads["head_label"] = heads["head"].astype(int)
        heads["panel"] = "direct logit attribution"
        pages = heatmap(heads, "head_label", "layer", "panel", f"{experiment}: per-head direct logit attribution", "logit diff", "head", "layer")
        written += save_pages(pages, out_dir, "head_attribution")
    return written


def labelled(values: pd.Series, count: int = LABELLED) -> pd.Series:
    """The values' texts where they are among the `count` largest |value| (every one when there are few), else ''."""
    if len(values) <= 2 * count:
        return values.map(cell_text)
    keep = values.abs().nlargest(count).index
    return pd.Series([cell_text(v) if i in keep else "" for i, v in values.items()], index=values.index)


def logit_lens(rows: pd.DataFrame, experiment: str) -> tuple[p9.ggplot, float, float]:
    """The logit difference read off the residual stream at each depth (before layer L, after its attention, after
    the block), a line over layers."""
    df = rows.copy()
    df["depth"] = df["layer"].astype(float) + df["stream"].map(DEPTH).fillna(0.0)
    df = df.sort_values("depth")
    df["label"] = labelled(df["value"])
    df.loc[df.index[-1], "label"] = cell_text(df["value"].iloc[-1])  # the model's own logit difference, at the end
    nudge = 0.04 * max(1.0, float(df["value"].abs().max()))
    df["label_y"] = df["value"] + df["value"].map(lambda v: nudge if v >= 0 else -nudge)
    n_layers = int(df["layer"].max()) + 1
    step = 1 if n_layers <= 32 else (2 if n_layers <= 64 else 4)
    plot = (
        p9.ggplot(df, p9.aes("depth", "value"))
        + p9.geom_hline(yintercept=0, color="grey")
        + p9.geom_line(color="#08519c")
        + p9.geom_point(color="#08519c", size=1.6)
        + p9.geom_text(p9.aes(y="label_y", label="label"), size=6.5)
        + p9.scale_x_continuous(breaks=list(range(0, n_layers + 1, step)))
        + p9.labs(x="layer (the stream entering it; half-way: after its attention)", y="logit difference",
                  title=f"{experiment}: logit lens (accumulated residual stream)")
        + p9.theme_minimal()
        + p9.theme(panel_grid_minor=p9.element_blank())
    )
    return plot, min(MAX_INCHES, max(7.0, 0.25 * n_layers + 3)), 4.0


def layer_bars(rows: pd.DataFrame, experiment: str) -> list[tuple[p9.ggplot, float, float]]:
    """Each layer's attention and MLP output (and the embeddings) projected on the logit difference direction:
    bars side by side per layer, the largest ones labelled; more than LAYERS_PER_PAGE layers go to further pages."""
    df = rows.copy()
    df["component"] = pd.Categorical(df["stream"].map(COMPONENT), categories=list(COLOURS), ordered=True)
    embeddings = df["stream"].isin(["embed", "pos_embed"])
    df["x"] = df["layer"].astype(int).astype(str).where(~embeddings, "embed")
    df["label"] = labelled(df["value"])
    nudge = 0.03 * max(1.0, float(df["value"].abs().max()))
    df["label_y"] = df["value"] + df["value"].map(lambda v: nudge if v >= 0 else -nudge)
    layer_order = [str(l) for l in sorted(df.loc[~embeddings, "layer"].astype(int).unique())]
    pages = chunks(layer_order, LAYERS_PER_PAGE)
    out = []
    for number, chosen in enumerate(pages, start=1):
        order = (["embed"] if number == 1 and embeddings.any() else []) + chosen
        part = df[df["x"].isin(order)].copy()
        part["x"] = pd.Categorical(part["x"], categories=order, ordered=True)
        dodge = p9.position_dodge(width=0.85)
        plot = (
            p9.ggplot(part, p9.aes("x", "value", fill="component"))
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_col(position=dodge, width=0.85)
            + p9.geom_text(p9.aes(y="label_y", label="label", group="component"), position=dodge, size=6.5)
            + p9.scale_fill_manual(values=COLOURS, drop=True)
            + p9.labs(x="layer (the bars and manifest.json's constant sum to the measured logit difference)", y="direct effect on\nthe logit difference",
                      fill="", title=paged_title(f"{experiment}: direct attribution per layer", number, len(pages),
                                                 f"layers {chosen[0]}-{chosen[-1]}"))
            + p9.theme_minimal()
            + p9.theme(panel_grid_major_x=p9.element_blank(), legend_position="top",
                       axis_text_x=p9.element_text(size=7 if len(order) > 40 else 8.8))
        )
        out.append((plot, min(MAX_INCHES, max(7.0, 0.3 * len(order) + 2.5)), 4.2))
    return out
