"""How one value reads on a page: numbers to 4 significant digits (a key number to two decimals), a table cell with
the exact value it sorts by, a token with its tokenizer markers undone."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pandas as pd

from circuitlab.tokens import readable_token


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(value: float) -> str:
    """A cell's number: 4 significant digits, no "-0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = f"{value:.4g}"
    return "0" if float(text) == 0 else text


def headline(value: float) -> str:
    """A key number as the index and the summary show it: two decimals where that reads well (1.00, 0.97, -36.46)."""
    return f"{value:.2f}" if 0.01 <= abs(value) < 1e4 else number(value)


def pretty(value) -> str:
    """A manifest entry in one line: a number as a cell shows it, a dict or list as JSON."""
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def plain_text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


@dataclass(frozen=True)
class Cell:
    """One table cell: its text; a number also carries the exact value it sorts by (`data-v`) and shows on hover;
    `row` is the CSV row it was read from (`data-row`)."""

    text: str
    numeric: bool = False
    sort_value: str | None = None
    title: str | None = None
    row: int | None = None


def cell(value, row: int | None = None) -> Cell:
    if is_number(value) and not (isinstance(value, float) and math.isnan(value)):
        return Cell(number(float(value)), numeric=True, sort_value=repr(float(value)), title=repr(value), row=row)
    if isinstance(value, float) and math.isnan(value):
        return Cell("", numeric=True, sort_value="", row=row)
    return Cell(plain_text(value), row=row)


def token_text(token: str) -> str:
    """A token as shown: its text (tokenizer markers such as Ġ or ▁ undone), whitespace-only tokens (a space, a
    newline) written out, so that they stay visible."""
    token = readable_token(token)
    return token if token.strip() else repr(token)[1:-1]
