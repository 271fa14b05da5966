"""Path patching: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.heatmaps import heatmap
from circuitlab.plotting import MAX_INCHES, RunContext, chunks, paged_title, save_pages
from circuitlab.runfiles import read_table
from circuitlab.tokens import position_text

SUBTITLE = ("blue, negative: the sender's path restores the normal answer (−100 %: fully); 0: no effect;\n"
            "red, positive: it pushes the output further towards the contrast answer")


def path_patching_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The seed's "Path patching results": sender layer x head, the logit diff variation in percent, one
    panel per receiver set; and the attention patterns of the chosen heads when the run saved them."""
    experiment = results["experiment"].iloc[0]
    variation = results[results["metric"] == "logit_diff_variation"].copy()
    variation["value"] = 100 * variation["value"]
    variation["sender"] = [
        f"head {h}" if stream == "z" and heads and "," not in heads else ("mlp" if stream == "mlp_out" else f"heads {heads or 'all'}")
        for stream, h, heads in zip(variation["stream"], variation["head"], variation["heads"].fillna(""))
    ]
    variation["layer"] = variation["layer"].astype(int)  # sender layers in numeric order (0, 1, 2, ..., 10, not 0, 1, 10)
    variation["panel"] = "receiver: " + variation["receiver"].fillna("")
    pages = heatmap(variation, "layer", "sender", "panel", f"{experiment}: path patching results", "logit diff\nvariation (%)",
                    "sender layer", "sender", cell_format="{:.0f}", min_limit=5.0, subtitle=SUBTITLE)
    written = save_pages(pages, out_dir, "path_patching_heatmap")
    patterns_csv = Path(out_dir).parent / "attention_patterns.csv"
    if patterns_csv.exists():
        patterns = read_table(patterns_csv, keep_default_na=False, dtype={"head": str, "query_label": str, "key_label": str})
        written += attention_pattern_figure(patterns, out_dir, experiment, RunContext.of(Path(out_dir).parent))
    return written


def attention_pattern_figure(patterns: pd.DataFrame, out_dir: Path, experiment: str, context: RunContext | None = None) -> list[Path]:
    """Query x key heatmaps of mean attention weights, one facet per head, readable token labels on both axes
    (with the role the task gives a position); heads beyond one page's grid go to further pages."""
    context = context or RunContext()
    df = patterns.copy()
    for column in ("query_label", "key_label"):
        df[column] = df[column].map(lambda label: context.position(position_text(label)))
    order = df.drop_duplicates("query").sort_values("query")["query_label"].tolist()
    heads = list(dict.fromkeys("head " + df["head"]))
    df["head"] = "head " + df["head"]
    n_tokens = len(order)
    prompts = f"mean over {df['n_prompts'].iloc[0]} {df['prompts'].iloc[0]} prompts"
    label_chars = max(len(label) for label in order)
    side = max(3.0, 0.14 * n_tokens + 0.07 * label_chars + 0.6)  # one head's panel, its labels included
    columns = max(1, min(len(heads), 4, int((MAX_INCHES - 1.5) // side)))
    rows = max(1, int((MAX_INCHES - 1.5) // side))
    pages = chunks(heads, columns * rows)
    drawn = []
    for number, chosen in enumerate(pages, start=1):
        part = df[df["head"].isin(chosen)].copy()
        part["key_label"] = pd.Categorical(part["key_label"], categories=order, ordered=True)
        part["query_label"] = pd.Categorical(part["query_label"], categories=order[::-1], ordered=True)
        part["head"] = pd.Categorical(part["head"], categories=chosen, ordered=True)
        ncol = min(columns, len(chosen))
        plot = (
            p9.ggplot(part, p9.aes("key_label", "query_label", fill="weight"))
            + p9.geom_tile()
            + p9.scale_fill_gradient(low="white", high="#08306b", limits=(0, 1), name="attention")
            + p9.facet_wrap("~head", ncol=ncol, scales="free")
            + p9.labs(x="key", y="query", title=paged_title(f"{experiment}: attention patterns ({prompts})", number, len(pages)),
                      subtitle="position:token where every prompt has that token, else the named position they share, else (varies)")
            + p9.theme_minimal()
            + p9.theme(axis_text_x=p9.element_text(rotation=90, size=6), axis_text_y=p9.element_text(size=6), panel_grid=p9.element_blank())
        )
        drawn.append((plot, max(7.0, side * ncol + 1.5), side * math.ceil(len(chosen) / ncol) + 1.2))
    return save_pages(drawn, out_dir, "attention_patterns")
