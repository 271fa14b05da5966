"""Interchange interventions / DAS: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import head_group_bars, heatmap, save


def das_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 000's figures: IIA over layer x position (values in cells) for whole streams swept over several
    positions; IIA by layer, one line per stream, for streams at one position; bars for head groups."""
    experiment = results["experiment"].iloc[0]
    iia = results[results["metric"] == "iia"].copy()
    heads, groups = iia["heads"].fillna(""), iia["group"].fillna("")
    written: list[Path] = []
    whole = iia[(heads == "") | ((groups == "") & (iia["head"].isna()))]
    by_stream = whole.groupby("stream")["position_label"].nunique()
    grid = whole[whole["stream"].map(by_stream) > 1]
    if len(grid):
        plot, w, h = heatmap(grid, "position_label", "layer", "stream", f"{experiment}: interchange intervention accuracy", "IIA",
                             "position (first prompt's token)", "layer")
        written += save(plot, out_dir, "iia_heatmap", w, h)
    lines = whole[whole["stream"].map(by_stream) == 1]
    if len(lines):
        lines["label"] = lines["value"].map(lambda v: f"{v:.2f}")
        plot = (
            p9.ggplot(lines, p9.aes("layer", "value", color="stream"))
            + p9.geom_line()
            + p9.geom_point(size=2)
            + p9.geom_text(p9.aes(label="label"), nudge_y=0.03, size=7, show_legend=False)
            + p9.ylim(0, 1.05)
            + p9.labs(x="layer", y="IIA", title=f"{experiment}: IIA by layer ({lines['position_label'].iloc[0]})")
            + p9.theme_minimal()
        )
        written += save(plot, out_dir, "iia_by_layer", 8, 3.5)
    singles = iia[(heads != "") & (groups == "") & iia["head"].notna()]
    if len(singles):
        singles = singles.assign(head_label=singles["heads"])
        singles["panel"] = singles["stream"] + " · " + singles["position_label"]
        plot, w, h = heatmap(singles, "head_label", "layer", "panel", f"{experiment}: IIA per head", "IIA", "head", "layer")
        written += save(plot, out_dir, "iia_heads", w, h)
    for group in ("leave_one_out", "cumulative"):
        bars = iia[groups == group]
        if len(bars):
            plot, w, h = head_group_bars(bars, f"{experiment}: {group.replace('_', '-')} head groups", y_label="IIA")
            written += save(plot, out_dir, f"iia_heads_{group}", w, h)
    weights_csv = Path(out_dir).parent / "rotation_weights.csv"
    if weights_csv.exists():
        written += rotation_weight_histograms(pd.read_csv(weights_csv), out_dir, experiment)
    return written


def rotation_weight_histograms(weights: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Histograms of the learned basis entries, one panel per head: heads that matter carry large weights."""
    df = weights.copy()
    df["panel"] = "layer " + df["layer"].astype(str) + " · head " + df["head"].astype(str)
    df["panel"] = pd.Categorical(df["panel"], categories=list(dict.fromkeys(df["panel"])), ordered=True)
    plot = (
        p9.ggplot(df, p9.aes("weight"))
        + p9.geom_histogram(bins=30, fill="#3f007d")
        + p9.facet_wrap("~panel")
        + p9.labs(x="learned weight", y="count", title=f"{experiment}: DAS weights on the attention value output, by head")
        + p9.theme_minimal()
    )
    n = df["panel"].nunique()
    return save(plot, out_dir, "rotation_weights", min(16, 3 * min(n, 4) + 1), 2.5 * -(-n // 4) + 1)
