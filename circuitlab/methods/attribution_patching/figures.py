"""Attribution patching: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.heatmaps import heatmap
from circuitlab.plotting import FIRST_PROMPT, RunContext, save, save_pages
from circuitlab.tokens import position_text

LABELLED = 12  # points labelled per panel


def attribution_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Heatmap of the normalised attribution; with the exact run, attribution against exact patching."""
    experiment = results["experiment"].iloc[0]
    written: list[Path] = []
    estimate = results[(results["metric"] == "attribution_normalized")].copy()
    heads = estimate["heads"].fillna("")
    estimate["panel"] = estimate["stream"] + heads.map(lambda h: f" head {h}" if h else "")
    context = RunContext.of(Path(out_dir).parent)
    pages = heatmap(estimate.sort_values("layer", kind="stable"), "position_label", "layer", "panel", f"{experiment}: attribution patching (normalised)",
                    "estimated\nnormalised\nchange", FIRST_PROMPT, "layer", context=context, drop_leading_zeros=True)
    written += save_pages(pages, out_dir, "attribution_heatmap")
    exact = results[results["metric"] == "exact_normalized"]
    if len(exact):
        width, height = 4 + 3 * estimate["stream"].nunique(), 4.8
        written += save(attribution_vs_exact(estimate, exact, experiment), out_dir, "attribution_vs_exact", width, height)
    return written


def fit(frame: pd.DataFrame) -> dict:
    """r, the least-squares slope through the origin (how much of the exact change the estimate recovers) and how
    many points lie away from 0 (those are what r and the slope rest on; a cloud at 0 alone gives r = 1)."""
    x, y = frame["value_exact"], frame["value_attribution"]
    scale = max(float(x.abs().max()), float(y.abs().max()), 1e-12)
    away = int(((x.abs() > 0.02 * scale) | (y.abs() > 0.02 * scale)).sum())
    r = float(x.corr(y)) if x.std() > 0 and y.std() > 0 else float("nan")
    slope = float((x * y).sum() / (x * x).sum()) if float((x * x).sum()) > 0 else float("nan")
    return {"r": r, "slope": slope, "away": away, "n": len(frame)}


def attribution_vs_exact(estimate: pd.DataFrame, exact: pd.DataFrame, experiment: str) -> p9.ggplot:
    """Each location's attribution estimate against its exact patching value, one panel per stream: y = x dashed,
    the fitted slope through the origin solid, the panel title giving r, the slope and how many points are away
    from 0; the points away from 0 are labelled by layer and position."""
    keys = ["stream", "layer", "heads", "position"]
    both = estimate.merge(exact[keys + ["value"]], on=keys, suffixes=("_attribution", "_exact"))
    both["position_label"] = both["position_label"].map(position_text)
    fits = {stream: fit(frame) for stream, frame in both.groupby("stream", sort=False)}

    def title(stream: str) -> str:
        f = fits[stream]
        return f"{stream}: r = {f['r']:.2f}, slope = {f['slope']:.2f}\n{f['away']} of {f['n']} points away from 0"

    both["panel"] = both["stream"].map(title)
    lines = pd.DataFrame({"panel": [title(s_) for s_ in fits], "slope": [f["slope"] for f in fits.values()]})
    scale = max(float(both["value_exact"].abs().max()), float(both["value_attribution"].abs().max()), 1e-12)
    away = both[(both["value_exact"].abs() > 0.02 * scale) | (both["value_attribution"].abs() > 0.02 * scale)].copy()
    away["distance"] = away["value_exact"].abs() + away["value_attribution"].abs()
    away = away.sort_values("distance", ascending=False).groupby("stream", sort=False).head(LABELLED)  # the rest would pile up
    away["label"] = "L" + away["layer"].astype(str) + " " + away["position_label"]
    return (
        p9.ggplot(both, p9.aes("value_exact", "value_attribution"))
        + p9.geom_abline(slope=1, intercept=0, linetype="dashed", color="grey")
        + p9.geom_abline(p9.aes(slope="slope", intercept=0), data=lines.dropna(), color="#b2182b")
        + p9.geom_point(alpha=0.7)
        + p9.geom_text(p9.aes(label="label"), data=away, size=6.5, ha="left", nudge_x=0.02 * scale, va="top")
        + p9.scale_x_continuous(expand=(0.05, 0, 0.3, 0))  # room for the labels right of the points
        + p9.facet_wrap("~panel")
        + p9.labs(x="exact patching (normalised change)", y="attribution (estimate)",
                  title=f"{experiment}: attribution vs exact patching",
                  subtitle=f"dashed: y = x; red: least-squares slope through 0; labelled: the {LABELLED} points of a panel farthest from 0")
        + p9.theme_minimal()
    )
