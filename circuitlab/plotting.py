"""Plot helpers every method's figures share (plotnine only): atomic saving, ordered axes, heatmaps, head bars."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import plotnine as p9

FIRST_PROMPT = "position (first prompt's token)"
GROUP_SIGN = {"leave_one_out": "−", "cumulative": "+"}  # bar labels: "−head 3" left out, "+head 3" added


_CAPTURED: list[dict[str, p9.ggplot]] = []


@contextlib.contextmanager
def capture() -> Iterator[dict[str, p9.ggplot]]:
    """Within it, `save` writes nothing and hands each plot to the yielded dict instead (stem -> ggplot): the figures
    as plotnine objects, for a notebook."""
    plots: dict[str, p9.ggplot] = {}
    _CAPTURED.append(plots)
    try:
        yield plots
    finally:
        _CAPTURED.remove(plots)


def save(plot: p9.ggplot, out_dir: Path, stem: str, width: float, height: float) -> list[Path]:
    """Write `stem.png` and `stem.pdf` (atomically: a temp name of this process's own, then rename); inside
    `capture()`, record the plot instead."""
    from circuitlab.results import atomic_write

    if _CAPTURED:
        _CAPTURED[-1][stem] = plot + p9.theme(figure_size=(width, height))
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        final = out_dir / f"{stem}.{ext}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atomic_write(final, lambda tmp: plot.save(tmp, width=width, height=height, dpi=150, verbose=False, limitsize=False),
                         suffix=f".tmp.{ext}")
        written.append(final)
    return written


def ordered(df: pd.DataFrame, column: str, reverse: bool = False) -> pd.DataFrame:
    values = list(dict.fromkeys(df[column]))
    if column == "layer":
        values = sorted(values)
    df[column] = pd.Categorical(df[column], categories=values[::-1] if reverse else values, ordered=True)
    return df


def cell_text(value: float, cell_format: str = "{:.2f}") -> str:
    """A value as written in a cell: `cell_format`, and a value that rounds to zero written without its sign
    ("0.00", never "-0.00")."""
    if pd.isna(value):
        return ""
    text = cell_format.format(value)
    return cell_format.format(0.0) if float(text.rstrip("%")) == 0 else text


def heatmap(
    frame: pd.DataFrame, x: str, y: str, facet: str, title: str, value_name: str, x_label: str, y_label: str,
    cell_format: str = "{:.2f}", min_limit: float = 1.0, unit_interval: bool = False, subtitle: str | None = None,
) -> tuple[p9.ggplot, float, float]:
    """Tiles of `value` over x and y with the values written in the cells, one facet per `facet` value. The colour
    scale is symmetric around 0, at least +-`min_limit` wide; for a quantity in [0, 1] (`unit_interval`: IIA, a
    probability) it runs from white at 0 to dark at 1 instead."""
    df = frame.copy()
    if x_label == FIRST_PROMPT and not df[x].astype(str).str.contains(":").any():
        x_label = "position"  # named positions (IO, S1, ...), true of every prompt, not the first prompt's tokens
    for column in (x, facet):
        ordered(df, column)
    ordered(df, y, reverse=True)
    df["cell"] = df["value"].map(lambda v: cell_text(v, cell_format))
    limit = max(min_limit, float(df["value"].abs().max()))
    n_x, n_y, n_facets = df[x].nunique(), df[y].nunique(), df[facet].nunique()
    if unit_interval:
        fill = p9.scale_fill_gradient(low="#ffffff", high="#3f007d", limits=(0, 1), name=value_name)
        df["dark"] = df["value"] > 0.6  # white text on the dark tiles
    else:
        fill = p9.scale_fill_gradient2(low="#2166ac", mid="white", high="#b2182b", midpoint=0, limits=(-limit, limit), name=value_name)
        df["dark"] = df["value"].abs() > 0.75 * limit
    plot = (
        p9.ggplot(df, p9.aes(x, y, fill="value"))
        + p9.geom_tile(color="white")
        + p9.geom_text(p9.aes(label="cell", color="dark"), size=max(4, 8 - n_x // 8), show_legend=False)
        + p9.scale_color_manual(values={True: "white", False: "black"}, guide=None)
        + fill
        + p9.facet_wrap(f"~{facet}", ncol=1)
        + p9.labs(x=x_label, y=y_label, title=title, subtitle=subtitle)
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_text(rotation=60, ha="right"), panel_grid=p9.element_blank(), plot_subtitle=p9.element_text(size=9))
    )
    width = max(6.0, 0.55 * n_x + 2.5, 0.07 * max((len(line) for line in (subtitle or "").splitlines()), default=0) + 1)
    height = max(3.0, n_facets * (0.4 * n_y + 1.2) + 1.5 + 0.25 * len((subtitle or "").splitlines()))
    return plot, width, height


def layer_position_heatmap(frame: pd.DataFrame, title: str, value_name: str, facet: str = "stream", unit_interval: bool = False) -> tuple[p9.ggplot, float, float]:
    """Layer x position tiles, one facet per stream (or per tracked token)."""
    return heatmap(frame, "position_label", "layer", facet, title, value_name, "position (first prompt's token)", "layer", unit_interval=unit_interval)


def head_group_bars(frame: pd.DataFrame, title: str, y_label: str = "normalised logit diff", unit_interval: bool = False) -> tuple[p9.ggplot, float, float]:
    """One bar per head group, in sweep order, one facet per (stream, layer); a quantity in [0, 1]
    (`unit_interval`) on a white-to-dark scale and a 0..1 axis."""
    df = frame.copy()
    df["bar"] = [f"{GROUP_SIGN.get(g, '')}head {h}" for g, h in zip(df["group"], df["head"])]
    df["panel"] = df["stream"] + " layer " + df["layer"].astype(str) + " · " + df["position_label"]
    df["bar"] = pd.Categorical(df["bar"], categories=list(dict.fromkeys(df["bar"])), ordered=True)
    df["label"] = df["value"].map(cell_text)
    plot = (
        p9.ggplot(df, p9.aes("bar", "value", fill="value"))
        + p9.geom_col()
        + p9.geom_hline(yintercept=0, color="grey")
        + p9.geom_text(p9.aes(label="label"), va="bottom", size=7, nudge_y=0.01)
        + (p9.scale_fill_gradient(low="#dadaeb", high="#3f007d", limits=(0, 1), guide=None) if unit_interval
           else p9.scale_fill_gradient2(low="#2166ac", mid="#dddddd", high="#b2182b", midpoint=0, guide=None))
        + (p9.scale_y_continuous(limits=(0, 1.08)) if unit_interval else p9.scale_y_continuous())
        + p9.facet_wrap("~panel", ncol=1)
        + p9.labs(x="", y=y_label, title=title)
        + p9.theme_minimal()
        + p9.theme(axis_text_x=p9.element_text(rotation=45, ha="right"))
    )
    return plot, max(6.0, 0.5 * df["bar"].nunique() + 2), max(3.0, 2.2 * df["panel"].nunique() + 1)
