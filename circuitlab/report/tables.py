"""The tables a report shows, as data: results.csv with one row per location and one column per metric, each side
table CSV, and the baselines. Every numeric cell keeps the CSV row it came from (`data-row`), so the tests check
each shown value against the file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from circuitlab.errors import CircuitlabError
from circuitlab.headline import location_columns, method_record
from circuitlab.report.values import Cell, cell
from circuitlab.runfiles import read_table
from circuitlab.tokens import RunContext

MAX_ROWS = 500  # rows of one table shown inline (the whole CSV is a download link)
SORT_COLUMNS = ("score",)  # a side table with one of these columns is listed by its |value|, largest first


@dataclass(frozen=True)
class Row:
    cells: list[Cell]
    row: int | None = None  # the CSV row it shows (`data-row`), when the whole row is one CSV row


@dataclass(frozen=True)
class Table:
    """A table of the page: `rows` holds at most MAX_ROWS of `total`; sortable tables sort by a click on a header."""

    id: str
    columns: list[str]
    rows: list[Row]
    total: int
    sortable: bool = True
    note: str = ""
    more: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "more", self.total > len(self.rows))


def data_table(frame: pd.DataFrame, table_id: str, row_ids: list[int] | None = None, cell_rows: pd.DataFrame | None = None) -> Table:
    """`frame`'s first MAX_ROWS rows; `row_ids` say which CSV row each shows; `cell_rows` (same shape) give the CSV
    row of each cell instead."""
    shown = frame.head(MAX_ROWS)
    rows = []
    for i, values in enumerate(shown.itertuples(index=False, name=None)):
        if cell_rows is not None:
            cells = [cell(v, None if pd.isna(r) else int(r)) for v, r in zip(values, cell_rows.iloc[i])]
        else:
            cells = [cell(v) for v in values]
        rows.append(Row(cells, row_ids[i] if row_ids is not None else None))
    return Table(table_id, [str(c) for c in shown.columns], rows, total=len(frame))


def main_table(results: pd.DataFrame, metric: str | None, context: RunContext | None = None) -> Table:
    """results.csv with one row per location and one column per metric, listed by |key metric|, largest first;
    columns that hold one value in every row are said once in the note; positions with readable tokens and the
    role the task gives them (`context`)."""
    keys = location_columns(results)
    text_keys = results[keys].astype("string").fillna("")
    if context is not None and "position_label" in text_keys.columns:
        text_keys["position_label"] = text_keys["position_label"].map(context.position)
    constant = [c for c in ["experiment", "method", *keys] if c in results.columns and results[c].astype("string").fillna("").nunique() <= 1]
    varying = [c for c in keys if c not in constant]
    metrics = list(dict.fromkeys(results["metric"]))
    frame = text_keys[varying].copy()
    frame["_loc"] = pd.factorize(pd.MultiIndex.from_frame(frame) if varying else pd.Series([""] * len(frame)))[0] if len(frame) else []
    frame["_metric"], frame["_value"], frame["_row"] = results["metric"].values, results["value"].values, range(len(results))
    locations = frame.drop_duplicates("_loc").set_index("_loc")[varying]
    wide = locations.copy()
    rows = pd.DataFrame(index=locations.index)
    for m in metrics:
        part = frame[frame["_metric"] == m].drop_duplicates("_loc", keep="last").set_index("_loc")
        wide[m] = part["_value"].reindex(wide.index).astype(float)
        rows[m] = part["_row"].reindex(wide.index)
    for c in varying:  # numbers sort as numbers
        if c in ("layer", "head", "scale"):
            wide[c] = pd.to_numeric(wide[c].replace("", None), errors="coerce")
    if metric in wide.columns:
        order = wide[metric].abs().sort_values(ascending=False, na_position="last", kind="stable").index
        wide, rows = wide.loc[order], rows.loc[order]
    cell_rows = pd.concat([pd.DataFrame(index=wide.index, columns=varying, dtype=float), rows], axis=1)[list(wide.columns)]
    said = ", ".join(f"{c} = {results[c].astype('string').fillna('').iloc[0] or '(empty)'}" for c in constant if c in results.columns)
    note = (f"{len(wide)} locations x {len(metrics)} metrics ({len(results)} rows of results.csv), listed by |{metric}|, largest first; "
            f"click a column to sort. Every row: {said}.")
    table = data_table(wide.reset_index(drop=True), "table-results", cell_rows=cell_rows.reset_index(drop=True))
    return Table(table.id, table.columns, table.rows, table.total, note=note)


def side_table(path: Path, method: str | None, record: dict | None = None) -> Table | str:
    """A side-table CSV listed by the column the method names for it (`Method.table_sort`), else by |score|; the
    reason when the file cannot be read (a CSV the run did not write: the run's own were checked whole before)."""
    try:
        frame = read_table(path, record, keep_default_na=False, na_values=[""])
    except CircuitlabError as err:  # named, its table not shown
        return f"not shown: {err.why}"
    except Exception as err:  # noqa: BLE001  a CSV pandas cannot read although it is whole
        return f"not shown: pandas cannot read it ({type(err).__name__})"
    record = method_record(method)
    sort = dict(getattr(record, "table_sort", ()) or ()).get(path.name) if record is not None else None
    if sort is None:
        sort = next((c for c in SORT_COLUMNS if c in frame.columns), None)
    ids = list(range(len(frame)))
    note = f"{len(frame)} rows"
    if sort in frame.columns and pd.api.types.is_numeric_dtype(frame[sort]):
        order = frame[sort].abs().sort_values(ascending=False, na_position="last", kind="stable").index
        frame, ids = frame.loc[order], list(order)
        note += f", listed by |{sort}|, largest first"
    table = data_table(frame.reset_index(drop=True), f"table-{path.stem}", row_ids=ids)
    return Table(table.id, table.columns, table.rows, table.total, note=note)


def baselines_table(manifest: dict) -> Table | None:
    """The metrics of the unpatched runs (one row per prompt set: clean, corrupted); None when none were recorded."""
    baselines = manifest.get("baselines") or {}
    metrics = list(dict.fromkeys(m for side in baselines.values() if isinstance(side, dict) for m in side))
    if not metrics:
        return None
    rows = [Row([Cell(str(side)), *(cell(values.get(m)) if isinstance(values, dict) and m in values else Cell("") for m in metrics)])
            for side, values in baselines.items()]
    return Table("table-baselines", ["prompts", *metrics], rows, total=len(rows), sortable=False)
