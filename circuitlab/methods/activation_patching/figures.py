"""Activation patching: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuitlab.heatmaps import heatmap, layer_position_heatmap
from circuitlab.plotting import FIRST_PROMPT, GROUP_SIGN, RunContext, head_group_bars, save_pages


def activation_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Whole streams: layer x position heatmaps by stream. Single heads: layer x head heatmaps (all
    positions at once) or head x position heatmaps by layer. Head groups: bar plots. Tracked tokens: layer x
    position heatmaps by token. Position columns that are 0 everywhere before the prompts differ are left out."""
    experiment = results["experiment"].iloc[0]
    context = RunContext.of(Path(out_dir).parent)
    results = results.sort_values("layer", kind="stable")
    heads = results["heads"].fillna("")
    groups = results["group"].fillna("")
    normalized = results["metric"] == "logit_diff_normalized"
    label = "normalised\nlogit diff"
    written: list[Path] = []
    whole = results[normalized & (heads == "")]
    if len(whole):
        pages = layer_position_heatmap(whole, f"{experiment}: activation patching", label, context=context, drop_leading_zeros=True)
        written += save_pages(pages, out_dir, "patching_heatmap")
    single = results[normalized & (heads != "") & (groups == "")].copy()
    if len(single):
        single["head_label"] = single["heads"]
        together = single["heads"].str.contains(",").any()  # sweep.heads=all or lists of heads: sets patched together
        what, axis = ("head sets (the heads listed patched together)", "heads") if together else ("each head", "head")
        if single["position_label"].nunique() == 1:
            single["panel"] = single["stream"] + " · positions " + single["position_label"].map(context.position)
            pages = heatmap(single, "head_label", "layer", "panel", f"{experiment}: patching {what}", label, axis, "layer")
            written += save_pages(pages, out_dir, "head_heatmap")
        else:
            single["panel"] = single["stream"] + " layer " + single["layer"].astype(str)
            pages = heatmap(single, "position_label", "head_label", "panel", f"{experiment}: patching {what} at each position", label,
                            FIRST_PROMPT, axis, context=context, drop_leading_zeros=True)
            written += save_pages(pages, out_dir, "head_position_heatmap")
    for group in ("leave_one_out", "cumulative"):
        bars = results[normalized & (groups == group)].copy()
        if bars["position_label"].nunique() > 2:
            bars["bar"] = [f"{GROUP_SIGN[group]}head {h}" for h in bars["head"]]
            bars["panel"] = bars["stream"] + " layer " + bars["layer"].astype(str)
            pages = heatmap(bars, "position_label", "bar", "panel", f"{experiment}: {group.replace('_', '-')} head groups", label,
                            FIRST_PROMPT, "", context=context, drop_leading_zeros=True)
            written += save_pages(pages, out_dir, f"heads_{group}")
        elif len(bars):
            written += save_pages(head_group_bars(bars, f"{experiment}: {group.replace('_', '-')} head groups"), out_dir, f"heads_{group}")
    probs = results[results["metric"].str.startswith("prob:") & (groups == "")].copy()
    if len(probs):
        where = probs["stream"] + probs["heads"].fillna("").map(lambda h: f" head {h}" if h else "")
        probs["token"] = where + " · P(" + probs["metric"].str.removeprefix("prob:") + ")"
        pages = layer_position_heatmap(probs, f"{experiment}: tracked token probabilities", "probability", facet="token",
                                       unit_interval=True, context=context)
        written += save_pages(pages, out_dir, "token_probabilities")
    return written
