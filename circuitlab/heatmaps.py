"""Heatmaps with the values written in their cells, laid out by the size policy (plotting.py): cells shrink to a
readable minimum, facets wrap into a grid with their own axis labels, and what still does not fit is split into
pages. Position columns that hold exactly 0 everywhere before the prompts first differ are left out, with a note.
"""

from __future__ import annotations

import math

import pandas as pd
import plotnine as p9

from circuitlab.plotting import (FIRST_PROMPT, MAX_INCHES, Page, RunContext, cell_text, chunks, ordered, paged_title,
                                 title_height)

CELL_W = (0.5, 0.26)  # a cell's preferred and smallest width, inches
CELL_H = (0.32, 0.18)
LEGEND_W = 1.4
AXIS_CHAR = 8.8 * 0.6 / 72  # inches per character of axis text (theme_minimal: 8.8 pt)
ZERO = 1e-6  # |value| <= ZERO x max(1, max |value|) counts as exactly 0


def leading_zero_columns(df: pd.DataFrame, x: str) -> list:
    """The first x categories (in axis order) that are position indices (`3:was`) and whose every value is 0: positions
    before the prompts differ, where a patch or an attribution changes nothing by construction."""
    scale = max(1.0, float(df["value"].abs().max()) if len(df) else 1.0)
    peak = df.groupby(x, observed=True)["value"].apply(lambda v: float(v.abs().max()))
    lead = []
    for category in df[x].cat.categories:
        index = str(category).split(":")[0]
        if ":" not in str(category) or not index.lstrip("-").isdigit():  # named positions (IO, END, all) stay, zeros or not
            continue
        if category not in peak.index or not peak[category] <= ZERO * scale:
            break
        lead.append(category)
    return lead if len(lead) < len(df[x].cat.categories) else []  # never every column


def dropped_note(columns: list, context: RunContext) -> str:
    indices = [str(c).split(":")[0] for c in columns]
    where = f"positions {indices[0]}–{indices[-1]}" if len(indices) > 1 else f"position {indices[0]}"
    after = [int(i) for i in indices if i.lstrip("-").isdigit()]
    why = (" (the prompts first differ at position " + str(context.first_difference) + ")"
           if context.first_difference is not None and after and max(after) < context.first_difference else "")
    return f"{where} not drawn: 0 at every cell{why}"


def nan_note(values: pd.Series) -> str | None:
    """What the grey tiles are when some values are NaN (a normalised score is NaN when the run's baselines are too
    close to normalise by: the manifest's `baseline_gap` says why)."""
    missing = int(values.isna().sum())
    if not missing:
        return None
    if missing == len(values):
        return "every value is NaN (grey tiles): see the report's Baselines (manifest baseline_gap) for why"
    return f"{missing} of {len(values)} values are NaN (grey tiles, no number)"


def layout(n_x: int, n_y: int, n_facets: int, x_chars: int, y_chars: int, head: float, strip: bool) -> dict:
    """Cell sizes, columns of facets and facets per page that keep a page within MAX_INCHES a side."""
    x_axis = AXIS_CHAR * x_chars * math.sin(math.radians(60)) + 0.3
    y_axis = AXIS_CHAR * y_chars + 0.25
    usable_w = MAX_INCHES - LEGEND_W - 0.5
    usable_h = MAX_INCHES - head - 0.5
    strip_h = 0.3 if strip else 0.0
    cell_w = min(CELL_W[0], max(CELL_W[1], (usable_w - y_axis) / max(n_x, 1)))
    cell_h = min(CELL_H[0], max(CELL_H[1], (usable_h - x_axis - strip_h) / max(n_y, 1)))
    panel_w = n_x * cell_w + y_axis + 0.2
    panel_h = n_y * cell_h + x_axis + strip_h + 0.2
    ncol = max(1, min(n_facets, int(usable_w // panel_w)))
    nrow = max(1, int(usable_h // panel_h))
    per_page = ncol * nrow
    if n_facets <= per_page:  # one page: as many rows as needed, the columns balanced over them
        rows = -(-n_facets // ncol)
        ncol = -(-n_facets // rows)
    return {"cell_w": cell_w, "cell_h": cell_h, "panel_w": panel_w, "panel_h": panel_h, "ncol": ncol, "per_page": per_page}


def heatmap(
    frame: pd.DataFrame, x: str, y: str, facet: str, title: str, value_name: str, x_label: str, y_label: str,
    cell_format: str = "{:.2f}", min_limit: float = 1.0, unit_interval: bool = False, subtitle: str | None = None,
    context: RunContext | None = None, drop_leading_zeros: bool = False,
) -> list[Page]:
    """Tiles of `value` over x and y with the values written in the cells, one facet per `facet` value, as pages
    (plot, width, height) within the size policy. The colour scale is symmetric around 0, at least +-`min_limit`
    wide, the same on every page; for a quantity in [0, 1] (`unit_interval`: IIA, a probability) it runs from white
    at 0 to dark at 1 instead. Position labels show readable tokens and the role the task gives them (`context`);
    `drop_leading_zeros` leaves out the first position columns that are 0 everywhere, saying so in the subtitle."""
    df = frame.copy()
    context = context or RunContext()
    if x_label == FIRST_PROMPT and not df[x].astype(str).str.contains(":").any():
        x_label = "position"  # named positions (IO, S1, ...), true of every prompt, not the first prompt's tokens
    for column in {x, y, facet}:
        if column == "position_label":
            df[column] = df[column].map(context.position)
    for column in (x, facet):
        ordered(df, column)
    ordered(df, y, reverse=True)
    notes = [subtitle] if subtitle else []
    if drop_leading_zeros and x == "position_label":
        lead = leading_zero_columns(df, x)
        if len(lead) >= 2:
            df = df[~df[x].isin(lead)].copy()
            df[x] = df[x].cat.remove_categories(lead)
            notes.append(dropped_note(lead, context))
    missing = nan_note(df["value"])
    if missing:
        notes.append(missing)
    subtitle = "\n".join(notes) or None
    df["cell"] = df["value"].map(lambda v: cell_text(v, cell_format))
    limit = max(min_limit, float(df["value"].abs().max()) if len(df) else 0.0)
    if unit_interval:
        fill = p9.scale_fill_gradient(low="#ffffff", high="#3f007d", limits=(0, 1), name=value_name)
        df["dark"] = df["value"] > 0.6  # white text on the dark tiles
    else:
        fill = p9.scale_fill_gradient2(low="#2166ac", mid="white", high="#b2182b", midpoint=0, limits=(-limit, limit), name=value_name)
        df["dark"] = df["value"].abs() > 0.75 * limit
    xs, ys, facets = list(df[x].cat.categories), list(df[y].cat.categories), list(df[facet].cat.categories)
    head = title_height(title, subtitle, width=MAX_INCHES * 0.6)
    size = layout(len(xs), len(ys), len(facets), max((len(str(v)) for v in xs), default=1), max((len(str(v)) for v in ys), default=1),
                  head, strip=True)
    text_pt = min(8.0, size["cell_w"] * 19, size["cell_h"] * 30)
    pages = chunks(facets, size["per_page"])
    out = []
    for number, chosen in enumerate(pages, start=1):
        part = df[df[facet].isin(chosen)].copy()
        part[facet] = part[facet].cat.remove_unused_categories()
        ncol = min(size["ncol"], len(chosen))
        nrow = -(-len(chosen) // ncol)
        what = f"{chosen[0]} … {chosen[-1]}" if len(chosen) > 1 else str(chosen[0])
        plot = (
            p9.ggplot(part, p9.aes(x, y, fill="value"))
            + p9.geom_tile(color="white")
            + (p9.geom_text(p9.aes(label="cell", color="dark"), size=text_pt, show_legend=False) if text_pt >= 4.5 else p9.geom_blank())
            + p9.scale_color_manual(values={True: "white", False: "black"}, guide=None)
            + fill
            + p9.facet_wrap(f"~{facet}", ncol=ncol, scales="free" if len(facets) > 1 else "fixed")
            + p9.labs(x=x_label, y=y_label, title=paged_title(title, number, len(pages), what), subtitle=subtitle)
            + p9.theme_minimal()
            + p9.theme(axis_text_x=p9.element_text(rotation=60, ha="right"), panel_grid=p9.element_blank(),
                       plot_subtitle=p9.element_text(size=9))
        )
        width = max(6.0, ncol * size["panel_w"] + LEGEND_W + 0.5)
        height = max(3.0, nrow * size["panel_h"] + head + 0.5)
        out.append((plot, width, height))
    return out


def layer_position_heatmap(frame: pd.DataFrame, title: str, value_name: str, facet: str = "stream", unit_interval: bool = False,
                           context: RunContext | None = None, drop_leading_zeros: bool = False) -> list[Page]:
    """Layer x position tiles, one facet per stream (or per tracked token)."""
    return heatmap(frame, "position_label", "layer", facet, title, value_name, FIRST_PROMPT, "layer", unit_interval=unit_interval,
                   context=context, drop_leading_zeros=drop_leading_zeros)
