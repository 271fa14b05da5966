"""`report.html` of a run dir and `index.html` of a sweep dir or of `results/`, from the run dir's files alone
(results.csv, the side-table CSVs, figures/*.png, manifest.json, run_config.json, inputs.json, examples.json; pandas
only, no torch, no model), like the figures.

Self-contained: every figure is a PNG inlined as a data URI, every CSV a download link of its own, and the one
script (sorting tables; `<details>` collapse without it) is inline, so a report opens from `file://`, needs no network
and can be mailed. Nothing here is method-specific: any CSV in the run dir becomes a sortable table; a method's
registry record may name its key metric (`Method.key_metric`) and the side-table columns its tables are listed by
(`Method.table_sort`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import shlex
from pathlib import Path

import pandas as pd

from circuitlab.headline import describe_location, key_metric, key_number, location_columns, method_record  # noqa: F401  (report.key_number ...)
from circuitlab.tokens import RunContext, readable_token

log = logging.getLogger("circuitlab")

REPORT_FILE = "report.html"
INDEX_FILE = "index.html"
EXAMPLES_FILE = "examples.json"
MAX_ROWS = 500  # rows of one table shown inline (the whole CSV is a download link)
MAX_DOWNLOAD_BYTES = 4 << 20
MAX_JSON_CHARS = 200_000
THUMBNAIL_WIDTH = 360
LOCATION_ORDER = ("stream", "layer", "head", "heads", "group", "position", "position_label", "receiver", "scale", "in_circuit")
SORT_COLUMNS = ("score",)  # a side table with one of these columns is listed by its |value|, largest first

STYLE = """
.clr{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d1d1f;max-width:1200px;margin:0 auto;padding:0 12px 40px}
.clr h1{font-size:24px;margin:18px 0 4px}.clr h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
.clr h3{font-size:15px;margin:18px 0 6px}.clr .sub{color:#555;margin:0 0 10px}
.clr code,.clr pre{font:12.5px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f5f5f7;border-radius:4px}
.clr code{padding:1px 4px}.clr pre{padding:8px 10px;overflow:auto;max-height:520px}
.clr table{border-collapse:collapse;margin:4px 0 8px;font-size:13px}
.clr th,.clr td{border:1px solid #e1e1e6;padding:2px 7px;text-align:left;white-space:nowrap}
.clr th{background:#f0f0f4;position:sticky;top:0}.clr table.sortable th{cursor:pointer;user-select:none}
.clr table.sortable th[data-dir=asc]::after{content:" \\25B2"}.clr table.sortable th[data-dir=desc]::after{content:" \\25BC"}
.clr td.n{text-align:right;font-variant-numeric:tabular-nums}.clr .scroll{max-height:560px;overflow:auto;display:inline-block;max-width:100%}
.clr figure{margin:10px 0 22px}.clr figure img{max-width:100%;border:1px solid #eee}.clr figcaption{color:#555;font-size:12.5px}
.clr .kv td:first-child{color:#555}.clr .note{color:#666;font-size:12.5px}.clr summary{cursor:pointer;color:#0b57d0;margin:6px 0}
.clr .status-done{color:#137333}.clr .status-failed{color:#b3261e;font-weight:600}.clr .status-running,.clr .status-unfinished{color:#b06000}
.clr .toks{border-collapse:separate;border-spacing:2px}.clr .toks td{border:1px solid #ddd;border-radius:3px;padding:1px 4px;font:12px ui-monospace,monospace;white-space:pre}
.clr .toks td.lab{border:none;color:#555;font:11px system-ui,sans-serif}.clr .toks td.pos{border:none;color:#999;font-size:10px;text-align:center}
.clr .toks td.named{background:#fff4c2;border-color:#e0b800}.clr .toks td.diff{background:#fde0dc;border-color:#d93025}
.clr .toks td.named.diff{background:#fbd0a8}.clr .toks td.mark{border:none;color:#8a6d00;font:600 10px system-ui,sans-serif;text-align:center}
.clr .toks td.pad{color:#bbb}.clr .thumb{width:200px;max-height:170px;object-fit:contain;object-position:left top;border:1px solid #eee}
.clr .nav a{margin-right:12px}.clr table.index td{white-space:normal;vertical-align:top;max-width:340px}
.clr table.index td code{word-break:break-word}.clr .wide{overflow-x:auto}
"""

SCRIPT = """
(function(){
  function key(cell){var v=cell.getAttribute('data-v');if(v===null)v=cell.textContent.trim();
    if(v===''||v==='nan')return [2,0];var n=Number(v);return isNaN(n)?[1,v.toLowerCase()]:[0,n];}
  function compare(a,b){if(a[0]!==b[0])return a[0]-b[0];return a[1]<b[1]?-1:(a[1]>b[1]?1:0);}
  document.querySelectorAll('.clr table.sortable').forEach(function(table){
    if(table.getAttribute('data-ready'))return;table.setAttribute('data-ready','1');
    var heads=table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads,function(th,i){th.title='click to sort';th.addEventListener('click',function(){
      var asc=th.getAttribute('data-dir')!=='asc',body=table.tBodies[0],rows=Array.prototype.slice.call(body.rows);
      Array.prototype.forEach.call(heads,function(h){h.removeAttribute('data-dir');});th.setAttribute('data-dir',asc?'asc':'desc');
      rows.sort(function(r,s){var a=key(r.cells[i]),b=key(s.cells[i]);if(a[0]===2||b[0]===2)return a[0]-b[0];
        var c=compare(a,b);return asc?c:-c;});
      rows.forEach(function(r){body.appendChild(r);});});});
  });
})();
"""


def esc(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


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


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


# --- what a run dir holds -------------------------------------------------------------------------------------------

def overrides_of(run_dir: Path, manifest: dict | None = None) -> list[str] | None:
    """The overrides the run was started with: the manifest's (a notebook run, and CLI runs since reports), else
    Hydra's own record (`.hydra/overrides.yaml`); None when neither is there."""
    manifest = manifest if manifest is not None else read_json(Path(run_dir) / "manifest.json") or {}
    if isinstance(manifest.get("overrides"), list):
        return [str(o) for o in manifest["overrides"]]
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    if path.is_file():
        try:
            import yaml

            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            return [str(o) for o in data] if isinstance(data, list) else None
        except Exception:  # noqa: BLE001  a damaged Hydra record: the command is simply not known
            return None
    return None


def command_of(overrides: list[str] | None) -> str | None:
    if overrides is None:
        return None
    return "circuitlab run " + " ".join(shlex.quote(o) for o in overrides)


def notebook_call(overrides: list[str] | None) -> str | None:
    if overrides is None:
        return None
    experiment = [o.split("=", 1)[1] for o in overrides if o.startswith("+experiment=")]
    rest = [o for o in overrides if not o.startswith("+experiment=")]
    args = [repr(experiment[0])] if len(experiment) == 1 else []
    args += [repr(o) for o in (rest if len(experiment) == 1 else overrides)]
    return f"circuitlab.run({', '.join(args)})"


def run_status(run_dir: Path) -> str:
    """done (a manifest), running (a process holds the dir's lock), else failed (started, never finished)."""
    from circuitlab import rundir

    run_dir = Path(run_dir)
    if (run_dir / "manifest.json").is_file() and (run_dir / "results.csv").is_file():
        return "done"
    if rundir.holder(run_dir) is not None:
        return "running"
    return "failed"


def failure_line(run_dir: Path) -> str:
    """The last error-looking line of the job's own log (Hydra writes one per job), or ''."""
    for path in sorted(Path(run_dir).glob("*.log")):
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        for line in reversed(lines):
            if any(word in line.lower() for word in ("error", "exception", "traceback", "interrupted", "terminated")):
                return line[:300]
    return ""


def figure_files(run_dir: Path, manifest: dict | None) -> list[Path]:
    """figures/*.png, in the order the run drew them (the manifest's), then any others by name."""
    run_dir = Path(run_dir)
    found = sorted((run_dir / "figures").glob("*.png"))
    listed = [run_dir / f for f in (manifest or {}).get("files", []) if str(f).endswith(".png")]
    order = {p: i for i, p in enumerate(listed)}
    return sorted(found, key=lambda p: (order.get(p, len(order)), p.name))


def side_tables(run_dir: Path) -> list[Path]:
    return sorted(p for p in Path(run_dir).glob("*.csv") if p.name not in ("results.csv", "index.csv"))


def read_results_safely(run_dir: Path) -> tuple[pd.DataFrame | None, str]:
    from circuitlab.errors import CircuitlabError
    from circuitlab.figures import check_readable
    from circuitlab.results import read_results

    try:
        check_readable(run_dir)
        return read_results(run_dir), ""
    except CircuitlabError as err:
        return None, str(err)


# --- HTML pieces ----------------------------------------------------------------------------------------------------

def kv_table(items: list[tuple[str, object]]) -> str:
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{v if isinstance(v, Markup) else esc(v)}</td></tr>" for k, v in items)
    return f'<table class="kv">{rows}</table>'


class Markup(str):
    """HTML that is not escaped again."""


def cell(value, row: int | None = None) -> str:
    attrs = f' data-row="{row}"' if row is not None else ""
    if _numeric(value) and not (isinstance(value, float) and math.isnan(value)):
        return f'<td class="n" data-v="{esc(repr(float(value)))}"{attrs} title="{esc(repr(value))}">{esc(number(float(value)))}</td>'
    if isinstance(value, float) and math.isnan(value):
        return f'<td class="n" data-v=""{attrs}></td>'
    text = "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)
    return f"<td{attrs}>{esc(text)}</td>"


def data_table(frame: pd.DataFrame, table_id: str, row_ids: list[int] | None = None, cell_rows: pd.DataFrame | None = None) -> str:
    """A sortable table of `frame`'s first MAX_ROWS rows; `row_ids` (a `data-row` per row) say which CSV row each
    shows; `cell_rows` (same shape) give a `data-row` per cell instead."""
    shown = frame.head(MAX_ROWS)
    head = "".join(f"<th>{esc(c)}</th>" for c in shown.columns)
    body = []
    for i, values in enumerate(shown.itertuples(index=False, name=None)):
        rid = f' data-row="{row_ids[i]}"' if row_ids is not None else ""
        if cell_rows is not None:
            cells = "".join(cell(v, None if pd.isna(r) else int(r)) for v, r in zip(values, cell_rows.iloc[i]))
        else:
            cells = "".join(cell(v) for v in values)
        body.append(f"<tr{rid}>{cells}</tr>")
    more = f'<p class="note">showing {MAX_ROWS} of {len(frame)} rows; every row is in the CSV</p>' if len(frame) > MAX_ROWS else ""
    return (f'<div class="scroll"><table class="sortable" id="{esc(table_id)}" data-rows="{len(frame)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>{more}')


def download_link(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    if len(data) > MAX_DOWNLOAD_BYTES:
        return f'<span class="note">{esc(path.name)} ({len(data) >> 20} MiB, not inlined)</span>'
    encoded = base64.b64encode(data).decode("ascii")
    return f'<a download="{esc(path.name)}" href="data:text/csv;base64,{encoded}">download {esc(path.name)}</a>'


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def thumbnail_uri(path: Path, width: int = THUMBNAIL_WIDTH) -> str:
    """A small PNG of a figure (Pillow, which matplotlib brings), or the figure itself when it cannot be scaled."""
    try:
        from PIL import Image

        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.width > width:
                image = image.resize((width, max(1, round(image.height * width / image.width))), Image.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    except Exception:  # noqa: BLE001  a damaged PNG: show it as it is
        return png_data_uri(path)


def main_table(results: pd.DataFrame, metric: str | None, context: RunContext | None = None) -> tuple[str, str]:
    """results.csv with one row per location and one column per metric, listed by |key metric|, largest first;
    columns that hold one value in every row are said once above the table; positions with readable tokens and the
    role the task gives them (`context`). Returns (note, table)."""
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
    return note, data_table(wide.reset_index(drop=True), "table-results", cell_rows=cell_rows.reset_index(drop=True))


def side_table(path: Path, method: str | None) -> tuple[str, str]:
    try:
        frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except Exception as err:  # noqa: BLE001  a damaged side table is named, not fatal to the report
        return f"cannot be read ({type(err).__name__})", ""
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
    return note, data_table(frame.reset_index(drop=True), f"table-{path.stem}", row_ids=ids)


def token_text(token: str) -> str:
    """A token as shown: its text (tokenizer markers such as Ġ or ▁ undone), whitespace-only tokens (a space, a
    newline) written out, so that they stay visible."""
    token = readable_token(token)
    return token if token.strip() else repr(token)[1:-1]


def examples_section(run_dir: Path) -> str:
    """A few prompt pairs token by token: named positions marked, tokens that differ between the pair's two
    prompts highlighted (from examples.json, written by the run)."""
    data = read_json(Path(run_dir) / EXAMPLES_FILE)
    if not isinstance(data, dict) or not isinstance(data.get("pairs"), list):
        return '<p class="note">no examples.json in this run dir (written by runs since reports were added)</p>'
    names = data.get("prompt_names", ["clean", "corrupted"])
    out = [f'<p class="sub">{esc(data.get("n_pairs", "?"))} prompt pairs; the first {len(data["pairs"])} token by token '
           '(named positions in yellow above their token, tokens that differ between the two prompts in red).</p>']
    for number_, pair in enumerate(data["pairs"]):
        first, second = pair.get("clean", []), pair.get("corrupted", [])
        length = int(pair.get("length", max(len(first), len(second))))
        named: dict[int, list[str]] = {}
        for label, index in (pair.get("positions") or {}).items():
            named.setdefault(int(index), []).append(label)
        width = max(len(first), len(second))
        marks = "".join(f'<td class="mark">{esc(" ".join(named.get(i, [])))}</td>' for i in range(width))
        index_row = "".join(f'<td class="pos">{i}</td>' for i in range(width))

        def tokens(row: list[str], other: list[str]) -> str:
            cells = []
            for i in range(width):
                token = row[i] if i < len(row) else ""
                classes = [c for c, on in (("named", i in named), ("diff", i < len(other) and token != other[i]), ("pad", i >= length)) if on]
                cls = f' class="{" ".join(classes)}"' if classes else ""
                shown = esc(token_text(token)) or "&nbsp;"
                cells.append(f"<td{cls}>{shown}</td>")
            return "".join(cells)

        answers = ", ".join(f"{k}: {esc(repr(v))}" for k, v in (pair.get("answers") or {}).items())
        out.append(
            f'<h3>pair {number_}</h3><div class="scroll"><table class="toks">'
            f'<tr><td class="lab"></td>{marks}</tr><tr><td class="lab"></td>{index_row}</tr>'
            f'<tr><td class="lab">{esc(names[0])}</td>{tokens(first, second)}</tr>'
            f'<tr><td class="lab">{esc(names[1])}</td>{tokens(second, first)}</tr></table></div>'
            + (f'<p class="note">{answers}</p>' if answers else "")
        )
    return "".join(out)


def baselines_table(manifest: dict) -> str:
    baselines = manifest.get("baselines") or {}
    metrics = list(dict.fromkeys(m for side in baselines.values() if isinstance(side, dict) for m in side))
    if not metrics:
        return '<p class="note">no baselines recorded</p>'
    head = "<th>prompts</th>" + "".join(f"<th>{esc(m)}</th>" for m in metrics)
    rows = "".join(
        f"<tr><td>{esc(side)}</td>" + "".join(cell(values.get(m)) if isinstance(values, dict) and m in values else "<td></td>" for m in metrics) + "</tr>"
        for side, values in baselines.items()
    )
    return f'<table id="table-baselines"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'


def templates_text(record) -> Markup | str:
    """The prompt templates a run used (the manifest's `templates`: names and texts, and why that set)."""
    if not isinstance(record, dict) or not isinstance(record.get("templates"), dict):
        return "not recorded (the task has none, or the run is older than this record)"
    lines = [f"<code>{esc(text)}</code> ({esc(name)})" for name, text in record["templates"].items()]
    if isinstance(record.get("train_templates"), dict):
        lines += [f"training pairs: <code>{esc(text)}</code> ({esc(name)})" for name, text in record["train_templates"].items()]
    return Markup("<br>".join(lines) + (f'<br><span class="note">{esc(record.get("note", ""))}</span>' if record.get("note") else ""))


KNOWN_MANIFEST = {"experiment", "templates", "config", "model", "device", "seed", "n_prompt_pairs", "dropped_prompt_pairs", "n_sweep_points", "shard",
                  "chunks", "inputs", "baselines", "versions", "git_commit", "wall_time_seconds", "files", "overrides"}


def pretty(value) -> str:
    if isinstance(value, float):
        return number(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def report_body(run_dir: Path) -> str:
    """The report of one run, as an HTML fragment (a `div.clr`)."""
    import yaml

    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    config = manifest.get("config") or read_json(run_dir / "run_config.json") or {}
    results, problem = read_results_safely(run_dir)
    method = (config.get("method") or {}).get("name") if isinstance(config, dict) else None
    experiment = manifest.get("experiment") or (config.get("name") if isinstance(config, dict) else None) or run_dir.name
    status = run_status(run_dir)
    overrides = overrides_of(run_dir, manifest)
    parts = [f'<h1>{esc(experiment)}</h1><p class="sub">{esc(method or "?")} · {esc((config.get("model") or {}).get("name", "?") if isinstance(config, dict) else "?")}'
             f' · <span class="status-{status}">{status}</span> · {esc(manifest.get("device", ""))}</p>']
    nav = ["summary", "figures", "results", "tables", "prompts", "manifest"]
    parts.append('<p class="nav">' + "".join(f'<a href="#{"data" if n == "prompts" else n}">{n}</a>' for n in nav) + "</p>")
    command = command_of(overrides)
    parts.append('<h2 id="summary">Summary</h2>')
    items: list[tuple[str, object]] = []
    if command:
        items += [("command", Markup(f"<code>{esc(command)}</code>")), ("notebook", Markup(f"<code>{esc(notebook_call(overrides))}</code>"))]
    else:
        items.append(("command", "(the overrides were not recorded)"))
    if results is not None:
        key = key_number(results, method, run_dir)
        if key and key["value"] is not None:
            items.append(("key number", Markup(f"<b>{esc(key['metric'])} = {esc(headline(key['value']))}</b> at {esc(key['where'] or 'the only location')}"
                                               f'<br><span class="note">chosen by the rule for this kind of run: {esc(key["rule"])}'
                                               f' ({key["n"]} value{"s" if key["n"] != 1 else ""})</span>')))
    if problem:
        items.append(("results.csv", problem))
    if status == "failed" and failure_line(run_dir):
        items.append(("error", failure_line(run_dir)))
    configured = (config.get("run") or {}).get("dir") if isinstance(config, dict) else None
    # where the report is written (a multirun job's dir is Hydra's, not run.dir), except a merge's temporary dir
    items += [("run dir", configured if run_dir.name.startswith(".") and configured else str(run_dir))]
    parts.append(kv_table(items))
    model = dict(manifest.get("model") or {})
    dropped = manifest.get("dropped_prompt_pairs") or {}
    name = model.pop("model_name", None) or (config.get("model") or {}).get("name", "?")
    parts.append("<h3>Model and data</h3>" + kv_table([("model", Markup(f"<b>{esc(name)}</b> " + esc(", ".join(f"{k} {pretty(v)}" for k, v in model.items())))),
                           ("task", (config.get("task") or {}).get("name", "?") if isinstance(config, dict) else "?"),
                           ("prompt pairs", manifest.get("n_prompt_pairs", "?")),
                           ("templates", templates_text(manifest.get("templates"))),
                           ("dropped pairs", ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none"),
                           ("sweep points", manifest.get("n_sweep_points", "?"))]))
    parts.append("<h3>Baselines (unpatched runs)</h3>" + baselines_table(manifest))
    parts.append(f"<details><summary>the resolved config (run_config.json)</summary><pre>{esc(yaml.safe_dump(config, sort_keys=False, default_flow_style=None))}</pre></details>")
    inputs = manifest.get("inputs") or read_json(run_dir / "inputs.json") or {}
    if inputs:
        parts.append(f"<details><summary>input files and their sha256 (inputs.json)</summary><pre>{esc(json.dumps(inputs, indent=2, default=str))}</pre></details>")
    parts.append('<h2 id="figures">Figures</h2>')
    pngs = figure_files(run_dir, manifest)
    if not pngs:
        parts.append('<p class="note">no figures (figures=false, or none fits these rows; <code>circuitlab figures DIR</code> draws them)</p>')
    for png in pngs:
        pdf = png.with_suffix(".pdf")
        parts.append(f'<figure><img alt="{esc(png.stem)}" data-figure="{esc(png.name)}" src="{png_data_uri(png)}">'
                     f'<figcaption>figures/{esc(png.name)}{" (and .pdf)" if pdf.exists() else ""}</figcaption></figure>')
    parts.append('<h2 id="results">Results</h2>')
    if results is not None and len(results):
        note, table = main_table(results, key_metric(results, method), RunContext.of(run_dir))
        parts.append(f'<p class="note">{esc(note)} {download_link(run_dir / "results.csv")}</p>{table}')
    else:
        parts.append(f'<p class="note">{esc(problem or "results.csv holds no rows")}</p>')
    parts.append('<h2 id="tables">Side tables</h2>')
    tables = side_tables(run_dir)
    if not tables:
        parts.append('<p class="note">none: this run wrote results.csv only</p>')
    for path in tables:
        note, table = side_table(path, method)
        parts.append(f'<h3>{esc(path.name)}</h3><p class="note">{esc(note)} {download_link(path)}</p>{table}')
    records = [p for p in sorted(run_dir.glob("*.json")) if p.name not in ("manifest.json", "run_config.json", "inputs.json", EXAMPLES_FILE)]
    for path in records:  # a method's own JSON (circuit.json, ...): shown as it is, collapsed
        text = path.read_text(encoding="utf-8", errors="replace")
        shown = text if len(text) <= MAX_JSON_CHARS else text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters in {path.name})"
        parts.append(f"<details><summary>{esc(path.name)} ({len(text) / 1024:.1f} KiB)</summary><pre>{esc(shown)}</pre></details>")
    parts.append('<h2 id="data">Prompts</h2>')
    parts.append(examples_section(run_dir))
    parts.append('<h2 id="manifest">Manifest</h2>')
    timings = manifest.get("wall_time_seconds") or {}
    if timings:
        total = sum(v for v in timings.values() if _numeric(v))
        parts.append("<h3>Wall time (s)</h3>" + kv_table([*((k, pretty(v)) for k, v in timings.items()), ("total", number(total))]))
    parts.append("<h3>Versions</h3>" + kv_table([*((k, v) for k, v in (manifest.get("versions") or {}).items()),
                                                 ("git commit", manifest.get("git_commit") or "?")]))
    extra = [(k, pretty(v)) for k, v in manifest.items() if k not in KNOWN_MANIFEST]
    extra += [("seed", manifest.get("seed")), ("shard", pretty(manifest.get("shard"))), ("chunks", pretty(manifest.get("chunks")))]
    parts.append("<h3>Other entries</h3>" + kv_table([(k, v) for k, v in extra if v is not None]))
    return '<div class="clr">' + "".join(parts) + "</div>"


def document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>{body}<script>{SCRIPT}</script></body></html>\n")


def report_html(run_dir: Path) -> str:
    manifest = read_json(Path(run_dir) / "manifest.json") or {}
    return document(f"circuitlab · {manifest.get('experiment', Path(run_dir).name)}", report_body(run_dir))


def fragment(run_dir: Path) -> str:
    """The report for a notebook cell (`_repr_html_`): its style, body and script, no document around them."""
    return f"<style>{STYLE}</style>{report_body(run_dir)}<script>{SCRIPT}</script>"


def write_report(run_dir: Path) -> Path:
    from circuitlab.results import write_text

    path = Path(run_dir) / REPORT_FILE
    write_text(path, report_html(run_dir))
    return path


# --- index.html -----------------------------------------------------------------------------------------------------

def is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in ("results.csv", "manifest.json", "run_config.json", ".hydra"))


def run_dirs_under(root: Path) -> list[Path]:
    """Every run dir (or started Hydra job dir) at or under `root`, not descending into a run dir."""
    root = Path(root)
    found: list[Path] = []

    def walk(directory: Path) -> None:
        if is_run_dir(directory):
            found.append(directory)
            return
        children = [p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")]
        for child in sorted(children, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name)):  # job 2 before job 10
            walk(child)

    if root.is_dir():
        walk(root)
    return found


def run_summary(run_dir: Path) -> dict:
    """One index row: experiment, method, model, overrides, key number, status, thumbnail."""
    run_dir = Path(run_dir)
    manifest = read_json(run_dir / "manifest.json")
    manifest = manifest if isinstance(manifest, dict) else {}
    config = manifest.get("config") or read_json(run_dir / "run_config.json") or {}
    config = config if isinstance(config, dict) else {}
    status = run_status(run_dir)
    row = {"run_dir": run_dir, "status": status, "experiment": manifest.get("experiment") or config.get("name") or "",
           "method": (config.get("method") or {}).get("name", ""), "model": (config.get("model") or {}).get("name", ""),
           "overrides": overrides_of(run_dir, manifest), "key": None, "seconds": None, "thumbnail": None, "problem": ""}
    if status == "done":
        results, problem = read_results_safely(run_dir)
        row["problem"] = problem
        if results is not None and len(results):
            row["key"] = key_number(results, row["method"] or None, run_dir)
        timings = manifest.get("wall_time_seconds") or {}
        row["seconds"] = sum(v for v in timings.values() if _numeric(v)) if timings else None
        pngs = figure_files(run_dir, manifest)
        row["thumbnail"] = thumbnail_uri(pngs[0]) if pngs else None
    elif status == "failed":
        row["problem"] = failure_line(run_dir) or "started, never finished (no manifest.json)"
    return row


def index_body(root: Path, title: str | None = None) -> str:
    root = Path(root)
    runs = run_dirs_under(root)
    groups: dict[Path, list[dict]] = {}
    for run_dir in runs:
        groups.setdefault(run_dir.parent, []).append(run_summary(run_dir))
    counts = {s: sum(r["status"] == s for g in groups.values() for r in g) for s in ("done", "failed", "running")}
    parts = [f"<h1>{esc(title or root.name or str(root))}</h1>",
             f'<p class="sub">{len(runs)} runs under {esc(str(root))}: '
             + ", ".join(f'<span class="status-{s}">{n} {s}</span>' for s, n in counts.items() if n) + "</p>"]
    for parent, rows in groups.items():
        relative = parent.relative_to(root) if parent != root and parent.is_relative_to(root) else None
        if len(groups) > 1 or relative is not None:
            parts.append(f"<h2>{esc(str(relative) if relative is not None else parent.name)}</h2>")
        head = "".join(f"<th>{c}</th>" for c in ("figure", "run", "key number", "status", "method", "model", "overrides", "seconds"))
        body = []
        for row in rows:
            link = row["run_dir"].relative_to(root) if row["run_dir"] != root else Path(".")
            report = row["run_dir"] / REPORT_FILE
            href = (link / REPORT_FILE).as_posix() if report.exists() else link.as_posix() + "/"
            thumb = f'<a href="{esc(href)}"><img class="thumb" alt="{esc(row["experiment"])}" src="{row["thumbnail"]}"></a>' if row["thumbnail"] else ""
            key = row["key"]
            key_cell = (f'<td data-v="{esc(repr(key["value"]))}" title="{esc(key["metric"])} at {esc(key["where"])}; {esc(key["rule"])}">'
                        f'{esc(key["metric"])} <b>{esc(headline(key["value"]))}</b><br><span class="note">{esc(key["where"])}</span></td>'
                        if key and key["value"] is not None else f'<td>{esc(row["problem"])}</td>')
            overrides = " ".join(row["overrides"]) if row["overrides"] is not None else "(not recorded)"
            body.append(
                f'<tr data-status="{row["status"]}"><td>{thumb}</td><td data-v="{esc(row["experiment"])}"><a href="{esc(href)}"><b>{esc(row["experiment"] or "?")}</b></a>'
                f'<br><span class="note">{esc(link.as_posix())}</span></td>{key_cell}'
                f'<td class="status-{row["status"]}">{row["status"]}</td><td>{esc(row["method"])}</td>'
                f'<td>{esc(row["model"])}</td><td><code>{esc(overrides)}</code></td>{cell(row["seconds"])}</tr>'
            )
        parts.append(f'<div class="wide"><table class="sortable index"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>')
    if not runs:
        parts.append('<p class="note">no runs here yet</p>')
    return '<div class="clr">' + "".join(parts) + "</div>"


def index_html(root: Path, title: str | None = None) -> str:
    return document(f"circuitlab · {title or Path(root).name}", index_body(root, title))


def write_index(root: Path, title: str | None = None) -> Path:
    from circuitlab.results import write_text

    path = Path(root) / INDEX_FILE
    write_text(path, index_html(root, title))
    return path


def write_index_quietly(root: Path) -> Path | None:
    """`write_index` for the end of a multirun job: a failure is one warning, never the job's error."""
    try:
        return write_index(root)
    except Exception as err:  # noqa: BLE001
        log.warning("%s not written (%s: %s); `circuitlab report %s` retries", Path(root) / INDEX_FILE, type(err).__name__, err, root)
        return None


def sweep_dirs(root: Path) -> list[Path]:
    """Dirs at or under `root` whose children are run dirs (a multirun's sweep dir, an experiment's dir of runs)."""
    return sorted({run.parent for run in run_dirs_under(root) if run.parent != run})


def write_reports(roots: list[Path], title: str | None = None) -> tuple[list[Path], list[tuple[Path, str]]]:
    """`circuitlab report`: report.html in every run dir under `roots` that finished, index.html in each dir of runs
    and in each root. Returns (written files, [(run dir, why it was skipped)])."""
    from circuitlab.figures import check_readable
    from circuitlab.errors import CircuitlabError

    written, skipped = [], []
    for root in roots:
        runs = run_dirs_under(root)
        for run_dir in runs:
            if run_status(run_dir) != "done":
                skipped.append((run_dir, "not finished (no manifest.json or results.csv)"))
                continue
            try:
                check_readable(run_dir)
                written.append(write_report(run_dir))
            except CircuitlabError as err:
                skipped.append((run_dir, str(err)))
        for directory in sweep_dirs(root):
            if directory.is_relative_to(Path(root)) and directory != Path(root) and not is_run_dir(directory):
                written.append(write_index(directory))
        if not is_run_dir(Path(root)):
            written.append(write_index(Path(root), title))
    return written, skipped
