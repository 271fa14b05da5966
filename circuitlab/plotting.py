"""Plot helpers every method's figures share (plotnine only): the size policy, atomic saving of one figure or of its
pages, titles that fit, numeric axes in numeric order, the run's context (token roles), head bars. The heatmaps are
in `heatmaps.py`.

The size policy: no figure is more than MAX_SIDE_PX pixels on a side (at DPI). A figure that would be larger is
laid out smaller first (cells and bars shrink to a readable minimum, facets wrap into a grid) and then split into
pages, `NAME.png`, `NAME_2.png`, ... (each titled "page k of n"), never drawn larger.
"""

from __future__ import annotations

import contextlib
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.storage import atomic_write
from circuitlab.tokens import RunContext, position_text  # noqa: F401  (RunContext: the figures' import)

FIRST_PROMPT = "position (first prompt's token)"
GROUP_SIGN = {"leave_one_out": "−", "cumulative": "+"}  # bar labels: "−head 3" left out, "+head 3" added
DPI = 150
MAX_SIDE_PX = 4000
MAX_INCHES = MAX_SIDE_PX / DPI  # 26.7 in a side
TITLE_PT, SUBTITLE_PT, AXIS_TITLE_PT = 13.2, 9.0, 11.0  # theme_minimal's sizes (base 11) and the subtitle's own
CHAR_EM = 0.6  # mean width of a character of DejaVu Sans, in ems (a little wide: a wrapped line must fit)

Page = tuple[p9.ggplot, float, float]  # a plot and its width and height in inches

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


# --- text that fits -------------------------------------------------------------------------------------------------

def chars_that_fit(inches: float, points: float) -> int:
    return max(12, int(inches * 72 / (CHAR_EM * points)))


def wrap(text: str | None, inches: float, points: float) -> str | None:
    """`text` wrapped to lines that fit `inches` at `points` (its own line breaks kept)."""
    if not text:
        return text
    width = chars_that_fit(inches, points)
    return "\n".join(textwrap.fill(line, width) if len(line) > width else line for line in str(text).split("\n"))


def fit_text(plot: p9.ggplot, width: float, height: float) -> p9.ggplot:
    """The title, subtitle and caption wrapped to the figure's width, the axis titles to their side (none is cut),
    titles aligned with the figure's left edge rather than the panel's."""
    labels = plot.labels
    room = width - 0.3
    changes = {}
    for key, points, inches in (("title", TITLE_PT, room), ("subtitle", SUBTITLE_PT, room), ("caption", SUBTITLE_PT, room),
                                ("x", AXIS_TITLE_PT, width - 1.0), ("y", AXIS_TITLE_PT, height - 1.0)):
        text = getattr(labels, key, None)
        if isinstance(text, str) and text:
            wrapped = wrap(text, inches, points)
            if wrapped != text:
                changes[key] = wrapped
    if changes:
        plot = plot + p9.labs(**changes)
    return plot + p9.theme(plot_title_position="plot", plot_caption_position="plot")


def title_height(*texts: str | None, width: float = 10.0) -> float:
    """Inches the title and subtitle lines take once wrapped to `width`."""
    lines = 0.0
    for text, points in zip(texts, (TITLE_PT, SUBTITLE_PT, SUBTITLE_PT)):
        if text:
            lines += len(wrap(text, width - 0.3, points).split("\n")) * points * 1.5 / 72
    return lines + 0.3


# --- saving ---------------------------------------------------------------------------------------------------------

def save(plot: p9.ggplot, out_dir: Path, stem: str, width: float, height: float) -> list[Path]:
    """Write `stem.png` and `stem.pdf` (atomically: a temp name of this process's own, then rename), at most
    MAX_INCHES a side, its text fitted (`fit_text`); inside `capture()`, record the plot instead."""
    width, height = min(width, MAX_INCHES), min(height, MAX_INCHES)
    plot = fit_text(plot, width, height)
    if _CAPTURED:
        _CAPTURED[-1][stem] = plot + p9.theme(figure_size=(width, height))
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        final = out_dir / f"{stem}.{ext}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            atomic_write(final, lambda tmp: plot.save(tmp, width=width, height=height, dpi=DPI, verbose=False, limitsize=False),
                         suffix=f".tmp.{ext}")
        written.append(final)
    return written


def page_stem(stem: str, number: int) -> str:
    """`stem` for the first page, `stem_2`, `stem_3`, ... for the next ones."""
    return stem if number == 1 else f"{stem}_{number}"


def save_pages(pages: list[Page], out_dir: Path, stem: str) -> list[Path]:
    """Each page as its own figure (`page_stem`); a figure of one page is `stem` alone. Pages of an earlier drawing
    beyond this one's count are removed (a redraw with fewer pages leaves no stale page behind)."""
    written = []
    for number, (plot, width, height) in enumerate(pages, start=1):
        written += save(plot, out_dir, page_stem(stem, number), width, height)
    if not _CAPTURED and Path(out_dir).is_dir():
        for old in Path(out_dir).glob(f"{stem}_*.*"):
            suffix = old.stem[len(stem) + 1:]
            if suffix.isdigit() and int(suffix) > len(pages) and old.suffix in (".png", ".pdf"):
                old.unlink()
    return written


def paged_title(title: str, number: int, count: int, what: str = "") -> str:
    return title if count == 1 else f"{title} (page {number} of {count}{': ' + what if what else ''})"


def chunks(items: list, size: int) -> list[list]:
    size = max(1, size)
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


# --- axes -----------------------------------------------------------------------------------------------------------

def is_whole_number(value) -> bool:
    try:
        return float(value) == int(float(value))
    except (TypeError, ValueError):
        return False


def ordered(df: pd.DataFrame, column: str, reverse: bool = False) -> pd.DataFrame:
    """`column` as an ordered categorical: numbers (layers, heads, "10" as text) in numeric order, anything else in
    order of first appearance (the sweep's)."""
    values = list(dict.fromkeys(df[column]))
    if values and all(is_whole_number(v) and not isinstance(v, bool) for v in values):
        values = sorted(values, key=lambda v: float(v))
    df[column] = pd.Categorical(df[column], categories=values[::-1] if reverse else values, ordered=True)
    return df


def cell_text(value: float, cell_format: str = "{:.2f}") -> str:
    """A value as written in a cell: `cell_format`, and a value that rounds to zero written without its sign
    ("0.00", never "-0.00")."""
    if pd.isna(value):
        return ""
    text = cell_format.format(value)
    return cell_format.format(0.0) if float(text.rstrip("%")) == 0 else text


# --- bars of head groups --------------------------------------------------------------------------------------------

def head_group_bars(frame: pd.DataFrame, title: str, y_label: str = "normalised logit diff", unit_interval: bool = False) -> list[Page]:
    """One bar per head group, in sweep order, one facet per (stream, layer, position), wrapped into a grid and
    split into pages by the size policy; a quantity in [0, 1] (`unit_interval`) on a white-to-dark scale and a 0..1
    axis."""
    df = frame.copy()
    df["bar"] = [f"{GROUP_SIGN.get(g, '')}head {h}" for g, h in zip(df["group"], df["head"])]
    df["panel"] = df["stream"] + " layer " + df["layer"].astype(str) + " · " + df["position_label"].map(position_text)
    bars = list(dict.fromkeys(df["bar"]))
    panels = list(dict.fromkeys(df.sort_values("layer", kind="stable")["panel"]))
    df["label"] = df["value"].map(cell_text)
    panel_w, panel_h = max(3.0, 0.45 * len(bars) + 1.0), 2.6 + 0.06 * max(len(b) for b in bars)  # each panel names its bars
    ncol = max(1, min(len(panels), int((MAX_INCHES - 1.0) // panel_w)))
    nrow = max(1, int((MAX_INCHES - 1.2) // panel_h))
    pages = chunks(panels, ncol * nrow)
    out = []
    for number, chosen in enumerate(pages, start=1):
        part = df[df["panel"].isin(chosen)].copy()
        part["bar"] = pd.Categorical(part["bar"], categories=bars, ordered=True)
        part["panel"] = pd.Categorical(part["panel"], categories=chosen, ordered=True)
        columns = min(ncol, len(chosen))
        plot = (
            p9.ggplot(part, p9.aes("bar", "value", fill="value"))
            + p9.geom_col()
            + p9.geom_hline(yintercept=0, color="grey")
            + p9.geom_text(p9.aes(label="label"), va="bottom", size=7 if len(bars) <= 16 else 5.5, nudge_y=0.01)
            + (p9.scale_fill_gradient(low="#dadaeb", high="#3f007d", limits=(0, 1), guide=None) if unit_interval
               else p9.scale_fill_gradient2(low="#2166ac", mid="#dddddd", high="#b2182b", midpoint=0, guide=None))
            + (p9.scale_y_continuous(limits=(0, 1.08)) if unit_interval else p9.scale_y_continuous())
            + p9.facet_wrap("~panel", ncol=columns, scales="free_x")
            + p9.labs(x="", y=y_label, title=paged_title(title, number, len(pages)))
            + p9.theme_minimal()
            + p9.theme(axis_text_x=p9.element_text(rotation=45, ha="right"))
        )
        out.append((plot, max(6.0, panel_w * columns + 1.0), max(3.0, panel_h * -(-len(chosen) // columns) + 1.2)))
    return out


# --- what a drawn figure shows (tests, scripts/real_scale_figures.py) -----------------------------------------------

def drawn(plot: p9.ggplot) -> dict:
    """Draw a plot as `save` would (its figure_size, DPI) and report what is on it: its size in pixels, every visible
    text, and the texts that reach outside the figure (cut off in the PNG)."""
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        figure = (plot + p9.theme(dpi=DPI)).draw()
        canvas = FigureCanvasAgg(figure)
        figure.set_dpi(DPI)
        canvas.draw()
    renderer = canvas.get_renderer()
    width, height = canvas.get_width_height()
    texts, outside = [], []
    for artist in figure.findobj(Text):
        content = artist.get_text()
        if not artist.get_visible() or not content.strip():
            continue
        texts.append(content)
        box = artist.get_window_extent(renderer)
        if box.x0 < -2 or box.y0 < -2 or box.x1 > width + 2 or box.y1 > height + 2:
            outside.append(content)
    plt.close(figure)
    return {"width": width, "height": height, "texts": texts, "outside": outside}
