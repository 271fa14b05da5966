"""What the report tests share: a finished small run of every registered method (the session fixture `report_runs`
in conftest.py builds them once) and `Page`, the parts of a report the tests read."""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

from tests.test_registry import METHOD_SETTINGS

SMALL = ["progress=false", "device=cpu"]
# one run of each method kind, small; a method registered later runs its own YAML with test_registry's settings
RUNS = {
    "activation_patching": ["+experiment=ioi_patching", "task.n_prompts=8"],
    "attribution_patching": ["+experiment=ioi_attribution", "task.n_prompts=8"],
    "path_patching": ["+experiment=ioi_path_to_name_movers", "task.n_prompts=8"],
    "das": ["+experiment=ioi_position_heads_loo", "task.n_prompts=8", "task.n_train=16", "method.epochs=1"],
    "direct_attribution": ["+experiment=ioi_dla", "task.n_prompts=8"],
    "ablation": ["+experiment=known_circuit_scales", "task.n_prompts=8"],
}


def overrides_for(method: str) -> list[str]:
    return RUNS.get(method) or [f"method={method}", *METHOD_SETTINGS.get(method, []), "task.n_prompts=8"]


def build_runs(root: Path) -> dict[str, Path]:
    """A finished run dir of every registered method under `root` (figures drawn, report written at the end)."""
    from circuitlab import cli
    from circuitlab.methods import registry
    from circuitlab.run import run_experiment

    out = {}
    for method in registry.METHODS:
        run_dir = root / method
        overrides = [*overrides_for(method), *SMALL, f"run.dir={run_dir}"]
        run_experiment(cli.compose_config(overrides), run_dir, overrides=overrides)
        out[method] = run_dir
    return out


class Page(HTMLParser):
    """The parts of a report the tests read: tables (id -> rows of cells), images, code and links; `shown` holds every
    text and attribute value as a browser reads it (entities decoded)."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[dict]]] = {}
        self.row_ids: dict[str, list[str | None]] = {}
        self.images: list[dict] = []
        self.links: list[str] = []
        self.scripts: list[str] = []
        self.code: list[str] = []
        self.shown: list[str] = []
        self._table: str | None = None
        self._cell: dict | None = None
        self._in: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.shown += [value for _, value in attrs if value]
        attrs = dict(attrs)
        if tag == "table":
            self._table = attrs.get("id") or f"table{len(self.tables)}"
            self.tables[self._table], self.row_ids[self._table] = [], []
        elif tag == "tr" and self._table and self._in != "thead":
            self.tables[self._table].append([])
            self.row_ids[self._table].append(attrs.get("data-row"))
        elif tag == "thead":
            self._in = "thead"
        elif tag == "td" and self._table and self.tables[self._table]:
            self._cell = {**attrs, "text": ""}
            self.tables[self._table][-1].append(self._cell)
        elif tag == "img":
            self.images.append(attrs)
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        elif tag in ("script", "code"):
            self._in = tag
            (self.scripts if tag == "script" else self.code).append("")
        if tag == "link" or (tag == "script" and "src" in attrs):
            self.links.append(attrs.get("href") or attrs.get("src"))

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        elif tag == "td":
            self._cell = None
        elif tag in ("thead", "script", "code"):
            self._in = None

    def handle_data(self, data):
        self.shown.append(data)
        if self._cell is not None:
            self._cell["text"] += data
        if self._in == "script":
            self.scripts[-1] += data
        elif self._in == "code":
            self.code[-1] += data


def read_page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def same_number(shown: str, value) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return shown in ("", "nan")
    return float(shown) == float(value)
