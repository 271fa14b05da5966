"""Interchange interventions / DAS: figures from its rows of results.csv and its side tables (pandas + plotnine only)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.heatmaps import heatmap
from circuitlab.plotting import FIRST_PROMPT, MAX_INCHES, RunContext, chunks, head_group_bars, paged_title, save, save_pages
from circuitlab.runfiles import read_table
from circuitlab.tokens import position_text

LABELLED_LAYERS = 16  # iia_by_layer writes each point's value up to this many layers
REAL_FIT = "real fit"  # the facet name of the real fit beside its controls


def variant(rows: pd.DataFrame, column: str) -> pd.Series:
    """A row's control or hypothesis name ("" for the real fit; a run from before the column: "")."""
    return rows[column].fillna("").astype(str) if column in rows.columns else pd.Series("", index=rows.index)


def with_controls(rows: pd.DataFrame, panel: str) -> pd.DataFrame:
    """The real fit's rows and its controls' rows, `panel` naming each facet `<panel> · <control>` (the real fit's
    first), rows ordered so that each panel's facets come in that order; without controls, the rows as they are."""
    control = variant(rows, "control")
    if not (control != "").any():
        return rows
    fits = [""] + list(dict.fromkeys(control[control != ""]))
    out = rows.assign(_fit=control.map(fits.index))
    out[panel] = out[panel].astype(str) + " · " + control.map(lambda c: c.replace("_", " ") if c else REAL_FIT)
    return out.sort_values("_fit", kind="stable").drop(columns="_fit")


def das_figures(results: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Seed 000's figures: IIA over layer x position (values in cells) for whole streams swept over several
    positions; IIA by layer, one line per stream, for streams at one position; bars for head groups."""
    experiment = results["experiment"].iloc[0]
    hypothesis_rows = results[variant(results, "hypothesis") != ""]
    written: list[Path] = hypothesis_figures(hypothesis_rows, out_dir, experiment) if len(hypothesis_rows) else []
    iia = results[(results["metric"] == "iia") & (variant(results, "hypothesis") == "")].copy()
    real = variant(iia, "control") == ""
    heads, groups = iia["heads"].fillna(""), iia["group"].fillna("")
    whole = iia[(heads == "") | ((groups == "") & (iia["head"].isna()))]
    by_stream = whole.groupby("stream")["position_label"].nunique()
    grid = whole[whole["stream"].map(by_stream) > 1]
    context = RunContext.of(Path(out_dir).parent)
    controlled = (~real).any()
    if len(grid):
        subtitle = CONTROLS_NOTE if controlled else None
        pages = heatmap(with_controls(grid.sort_values("layer", kind="stable"), "stream"), "position_label", "layer", "stream",
                        f"{experiment}: interchange intervention accuracy", "IIA", FIRST_PROMPT, "layer", unit_interval=True, context=context,
                        subtitle=subtitle)
        written += save_pages(pages, out_dir, "iia_heatmap")
    lines = whole[whole["stream"].map(by_stream) == 1]
    if len(lines):
        plot, w, h = iia_by_layer(with_controls(lines, "stream"), experiment)
        written += save(plot, out_dir, "iia_by_layer", w, h)
    singles = iia[(heads != "") & (groups == "") & iia["head"].notna()]
    if len(singles):
        singles = singles.assign(head_label=singles["heads"])
        singles["panel"] = singles["stream"] + " · " + singles["position_label"].map(context.position)
        pages = heatmap(with_controls(singles, "panel"), "head_label", "layer", "panel", f"{experiment}: IIA per head", "IIA", "head", "layer",
                        unit_interval=True, subtitle=CONTROLS_NOTE if controlled else None)
        written += save_pages(pages, out_dir, "iia_heads")
    for group in ("leave_one_out", "cumulative"):
        bars = iia[(groups == group) & real]  # the real fit's bars (its controls: results.csv and the report's table)
        if len(bars):
            pages = head_group_bars(bars, f"{experiment}: {group.replace('_', '-')} head groups", y_label="IIA", unit_interval=True)
            written += save_pages(pages, out_dir, f"iia_heads_{group}")
    weights_csv = Path(out_dir).parent / "rotation_weights.csv"
    if weights_csv.exists():
        written += rotation_weight_histograms(read_table(weights_csv), out_dir, experiment)
    return written


CONTROLS_NOTE = ("controls beside the real fit: random subspace (untrained, same size), random model (trained on a re-initialised "
                 "model), shuffled labels (trained and scored on labels shuffled across pairs)")


def hypothesis_figures(rows: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Hypotheses compared: IIA per hypothesis (layer x position, a facet per stream and hypothesis), and each
    hypothesis' margin over the best other one (> 0 where it wins, by the gap to the runner-up)."""
    from circuitlab.methods.das.hypotheses import margins

    context = RunContext.of(Path(out_dir).parent)
    iia = rows[rows["metric"] == "iia"].copy()
    iia = iia[iia["heads"].fillna("").astype(str) == ""]  # whole streams (heads: results.csv and hypotheses.csv)
    if iia.empty or iia["position_label"].nunique() < 1:
        return []
    iia["panel"] = iia["stream"] + " · " + iia["hypothesis"].astype(str)
    written = save_pages(heatmap(iia.sort_values("layer", kind="stable"), "position_label", "layer", "panel",
                                 f"{experiment}: IIA per hypothesis (the same base / source pairs, relabelled by each)", "IIA",
                                 FIRST_PROMPT, "layer", unit_interval=True, context=context), out_dir, "iia_hypotheses")
    margin = margins(iia)
    margin["panel"] = margin["stream"] + " · " + margin["hypothesis"].astype(str)
    pages = heatmap(margin.sort_values("layer", kind="stable"), "position_label", "layer", "panel",
                    f"{experiment}: which hypothesis each location supports", "IIA minus the best other", FIRST_PROMPT, "layer",
                    cell_format="{:+.2f}", context=context,
                    subtitle="each hypothesis' IIA minus the best IIA of the others: > 0 where it wins (by the gap to the runner-up), "
                             "< 0 where another does; hypotheses.csv names the best and the runner-up")
    return written + save_pages(pages, out_dir, "hypothesis_margin")


def iia_by_layer(lines: pd.DataFrame, experiment: str) -> tuple[p9.ggplot, float, float]:
    """IIA against layer, one line per stream, on integer layer ticks; streams with the same IIA at every layer are
    drawn as one line, labelled with all their names, so that none hides another."""
    df = lines.copy()
    df["layer"] = df["layer"].astype(int)
    profile = df.sort_values("layer").groupby("stream", sort=False)["value"].apply(lambda v: tuple(round(float(x), 4) for x in v))
    members: dict[tuple, list[str]] = {}
    for stream, values in profile.items():
        members.setdefault(values, []).append(stream)
    names = {stream: " = ".join(group) for group in members.values() for stream in group}
    df["streams"] = df["stream"].map(names)
    df = df[df["stream"].isin([group[0] for group in members.values()])]
    layers = sorted(df["layer"].unique())
    labelled = len(layers) <= LABELLED_LAYERS  # beyond that the numbers pile up: the report's table has them
    df["label"] = df["value"].map(lambda v: f"{v:.2f}" if v >= 0.005 and labelled else "")  # zeros read off the axis
    dodge = p9.position_dodge(width=0.12 * min(len(members) - 1, 4) / max(len(members) - 1, 1))  # lines meeting at a value side by side
    df["label_y"] = df["value"] + 0.045
    plot = (
        p9.ggplot(df, p9.aes("layer", "value", color="streams", group="streams"))
        + p9.geom_line(position=dodge)
        + p9.geom_point(size=2, position=dodge)
        + p9.geom_text(p9.aes(y="label_y", label="label"), size=6.5, show_legend=False, position=dodge)
        + p9.scale_x_continuous(breaks=layers, limits=(min(layers) - 0.3, max(layers) + 0.3))
        + p9.scale_y_continuous(limits=(0, 1.08), breaks=[0, 0.25, 0.5, 0.75, 1])
        + p9.labs(x="layer", y="IIA", color="stream", title=f"{experiment}: IIA by layer ({position_text(df['position_label'].iloc[0])})",
                  subtitle="streams with the same IIA at every layer share one line (named a = b)" if len(members) < len(names) else None)
        + p9.theme_minimal()
        + p9.theme(panel_grid_minor=p9.element_blank(), axis_text_x=p9.element_text(size=7 if len(layers) > 24 else 8.8))
    )
    width = min(MAX_INCHES, max(8.0, 0.28 * len(layers) + 3) + 0.07 * max(len(n) for n in names.values()))
    return plot, width, 3.8 if labelled else 3.4


def rotation_weight_histograms(weights: pd.DataFrame, out_dir: Path, experiment: str) -> list[Path]:
    """Histograms of the learned basis entries, one panel per head: heads that matter carry large weights."""
    df = weights.copy()
    df["panel"] = "layer " + df["layer"].astype(str) + " · head " + df["head"].astype(str)
    panels = list(dict.fromkeys(df.sort_values(["layer", "head"], kind="stable")["panel"]))
    columns = min(len(panels), 4 if len(panels) <= 16 else 8)  # many heads: smaller panels, more to a page
    panel_w, panel_h = (3.0, 2.5) if columns <= 4 else (2.5, 2.0)
    pages = chunks(panels, columns * int((MAX_INCHES - 1.5) // panel_h))
    drawn = []
    for number, chosen in enumerate(pages, start=1):
        part = df[df["panel"].isin(chosen)].copy()
        part["panel"] = pd.Categorical(part["panel"], categories=chosen, ordered=True)
        ncol = min(columns, len(chosen))
        plot = (
            p9.ggplot(part, p9.aes("weight"))
            + p9.geom_histogram(bins=30, fill="#3f007d")
            + p9.facet_wrap("~panel", ncol=ncol)
            + p9.labs(x="learned weight", y="count", title=paged_title(f"{experiment}: DAS weights on the attention value output, by head", number, len(pages)))
            + p9.theme_minimal()
            + p9.theme(strip_text=p9.element_text(size=8 if columns > 4 else 9))
        )
        drawn.append((plot, max(7.0, panel_w * ncol + 1), panel_h * -(-len(chosen) // ncol) + 1.5))
    return save_pages(drawn, out_dir, "rotation_weights")
