"""Attribution patching: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import heatmap, save


def attribution_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Heatmap of the normalised attribution; with the exact run, attribution against exact patching."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    estimate = results[(results["metric"] == "attribution_normalized")].copy()
    heads = estimate["heads"].fillna("")
    estimate["panel"] = estimate["stream"] + heads.map(lambda h: f" head {h}" if h else "")
    plot, w, h = heatmap(estimate, "position_label", "layer", "panel", f"{experiment}: attribution patching (normalised)",
                         "estimated\nnormalised\nchange", "position (first prompt's token)", "layer")
    written += save(plot, out_dir, "attribution_heatmap", w, h)
    exact = results[results["metric"] == "exact_normalized"]
    if len(exact):
        keys = ["stream", "layer", "heads", "position"]
        both = estimate.merge(exact[keys + ["value"]], on=keys, suffixes=("_attribution", "_exact"))
        r = both.groupby("stream")[["value_attribution", "value_exact"]].corr().iloc[0::2, -1].droplevel(1)
        both["stream_r"] = both["stream"].map(lambda s_: f"{s_} (r = {r[s_]:.2f})")
        plot = (
            p9.ggplot(both, p9.aes("value_exact", "value_attribution"))
            + p9.geom_abline(slope=1, intercept=0, linetype="dashed", color="grey")
            + p9.geom_point(alpha=0.7)
            + p9.facet_wrap("~stream_r")
            + p9.labs(x="exact patching (normalised change)", y="attribution (estimate)", title=f"{experiment}: attribution vs exact patching")
            + p9.theme_minimal()
        )
        written += save(plot, out_dir, "attribution_vs_exact", 4 + 2.5 * both["stream"].nunique(), 4)
    return written
