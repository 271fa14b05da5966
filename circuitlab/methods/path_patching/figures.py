"""Path patching: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import heatmap, save


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
    variation["layer"] = variation["layer"].astype(str)
    variation["panel"] = "receiver: " + variation["receiver"].fillna("")
    plot, w, h = heatmap(variation, "layer", "sender", "panel", f"{experiment}: path patching results", "logit diff\nvariation (%)",
                         "sender layer", "sender", cell_format="{:.0f}", min_limit=5.0,
                         subtitle="blue, negative: the sender's path restores the normal answer\n"
                                  "(−100 %: fully); 0: no effect; red, positive: it pushes the\n"
                                  "output further towards the contrast answer")
    written = save(plot, out_dir, "path_patching_heatmap", w, h)
    patterns_csv = Path(out_dir).parent / "attention_patterns.csv"
    if patterns_csv.exists():
        written += attention_pattern_figure(pd.read_csv(patterns_csv, keep_default_na=False, dtype={"head": str, "query_label": str, "key_label": str}), out_dir, experiment)
    return written


def attention_pattern_figure(patterns: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Query x key heatmaps of mean attention weights, one facet per head, token labels on both axes."""
    df = patterns.copy()
    order = df.drop_duplicates("query").sort_values("query")["query_label"].tolist()
    df["key_label"] = pd.Categorical(df["key_label"], categories=order, ordered=True)
    df["query_label"] = pd.Categorical(df["query_label"], categories=order[::-1], ordered=True)
    df["head"] = pd.Categorical("head " + df["head"], categories=list(dict.fromkeys("head " + df["head"])), ordered=True)
    n_tokens, n_heads = len(order), df["head"].nunique()
    prompts = f"mean over {df['n_prompts'].iloc[0]} {df['prompts'].iloc[0]} prompts"
    plot = (
        p9.ggplot(df, p9.aes("key_label", "query_label", fill="weight"))
        + p9.geom_tile()
        + p9.scale_fill_gradient(low="white", high="#08306b", limits=(0, 1), name="attention")
        + p9.facet_wrap("~head", ncol=min(4, n_heads))
        + p9.labs(x="key", y="query", title=f"{experiment}: attention patterns ({prompts})",
                  subtitle="position:token where every prompt has that token, else the named position they share, else (varies)")
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_text(rotation=90, size=5), axis_text_y=p9.element_text(size=5), panel_grid=p9.element_blank())
    )
    side = max(3.0, 0.09 * n_tokens + 1.5)
    columns = min(4, n_heads)
    rows = -(-n_heads // columns)
    return save(plot, out_dir, "attention_patterns", side * columns + 1.5, side * rows + 1)
