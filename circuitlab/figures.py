"""Figures from a run's results.csv alone (pandas + plotnine; no torch, no model)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import plotnine as p9

RENDERERS: dict[str, Callable[[pd.DataFrame, Path], list[Path]]] = {}


def renderer(method: str):
    def register(fn):
        if method in RENDERERS:
            raise ValueError(f"duplicate figure renderer for {method}")
        RENDERERS[method] = fn
        return fn

    return register


def save(plot: p9.ggplot, out_dir: Path, stem: str, width: float, height: float) -> list[Path]:
    """Write `stem.png` and `stem.pdf` (atomically: temp name, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        final = out_dir / f"{stem}.{ext}"
        tmp = out_dir / f".{stem}.tmp.{ext}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plot.save(tmp, width=width, height=height, dpi=150, verbose=False, limitsize=False)
        tmp.replace(final)
        written.append(final)
    return written


def layer_position_heatmap(frame: pd.DataFrame, title: str, value_name: str) -> tuple[p9.ggplot, float, float]:
    """Layer x position tiles, one facet per stream, values written in the cells."""
    df = frame.copy()
    positions = list(dict.fromkeys(df["position_label"]))
    layers = sorted(df["layer"].unique())
    streams = list(dict.fromkeys(df["stream"]))
    df["position_label"] = pd.Categorical(df["position_label"], categories=positions, ordered=True)
    df["layer"] = pd.Categorical(df["layer"], categories=layers[::-1], ordered=True)
    df["stream"] = pd.Categorical(df["stream"], categories=streams, ordered=True)
    df["cell"] = df["value"].map(lambda v: f"{v:.2f}")
    limit = max(1.0, float(df["value"].abs().max()))
    plot = (
        p9.ggplot(df, p9.aes("position_label", "layer", fill="value"))
        + p9.geom_tile(color="white")
        + p9.geom_text(p9.aes(label="cell"), size=7)
        + p9.scale_fill_gradient2(low="#2166ac", mid="white", high="#b2182b", midpoint=0, limits=(-limit, limit), name=value_name)
        + p9.facet_wrap("~stream", ncol=1)
        + p9.labs(x="position (first prompt's token)", y="layer", title=title)
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_text(rotation=60, ha="right"), panel_grid=p9.element_blank())
    )
    width = max(6.0, 0.55 * len(positions) + 2.5)
    height = max(3.0, len(streams) * (0.45 * len(layers) + 1.2) + 1.5)
    return plot, width, height


@renderer("activation_patching")
def activation_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    frame = results[results["metric"] == "logit_diff_normalized"]
    experiment = frame["experiment"].iloc[0]
    title = f"{experiment}: activation patching, normalised logit difference"
    plot, width, height = layer_position_heatmap(frame, title, "normalised\nlogit diff")
    return save(plot, out_dir, "patching_heatmap", width, height)


def render_run(run_dir: Path) -> list[Path]:
    """(Re)draw every figure of one run directory from its results.csv."""
    from circuitlab.results import read_results

    results = read_results(run_dir)
    written = []
    for method, frame in results.groupby("method", sort=False):
        if method in RENDERERS:
            written += RENDERERS[method](frame, Path(run_dir) / "figures")
    return written
