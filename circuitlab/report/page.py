"""The data of one run's report.html, section by section (summary, model and data, figures, results, side tables,
prompts, manifest), from the run dir's files alone; templates/report_body.html lays it out."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from circuitlab import runfiles
from circuitlab.errors import CircuitlabError
from circuitlab.headline import key_metric, key_number
from circuitlab.report import files, inline, prompts, tables
from circuitlab.report.values import headline, is_number, number, pretty
from circuitlab.tokens import RunContext

KNOWN_MANIFEST = {"experiment", "templates", "config", "model", "device", "seed", "n_prompt_pairs", "dropped_prompt_pairs", "n_sweep_points", "shard",
                  "chunks", "inputs", "baselines", "versions", "git_commit", "wall_time_seconds", "files", "overrides"}


def key_view(key: dict | None) -> dict | None:
    """The key number as the page says it, or None when the run has none."""
    if not key or key["value"] is None:
        return None
    return {**key, "text": headline(key["value"]), "where": key["where"] or "", "sort_value": repr(key["value"])}


def templates_view(record) -> dict | None:
    """The prompt templates a run used (the manifest's `templates`: names and texts, and why that set)."""
    if not isinstance(record, dict) or not isinstance(record.get("templates"), dict):
        return None
    train = record.get("train_templates")
    return {"used": [(str(text), str(name)) for name, text in record["templates"].items()],
            "train": [(str(text), str(name)) for name, text in train.items()] if isinstance(train, dict) else [],
            "note": str(record.get("note") or "")}


def summary(run_dir: Path, manifest: dict, config: dict, results, problem: str, method: str | None, status: str) -> dict:
    overrides = files.overrides_of(run_dir, manifest)
    key = key_number(results, method, run_dir) if results is not None else None
    configured = (config.get("run") or {}).get("dir")
    return {"command": files.command_of(overrides), "notebook": files.notebook_call(overrides), "key": key_view(key), "problem": problem,
            "error": files.failure_line(run_dir) if status == "failed" else "",
            # where the report is written (a multirun job's dir is Hydra's, not run.dir), except a merge's temporary dir
            "run_dir": str(configured if run_dir.name.startswith(".") and configured else run_dir)}


def model_and_data(manifest: dict, config: dict) -> dict:
    model = dict(manifest.get("model") or {})
    name = model.pop("model_name", None) or (config.get("model") or {}).get("name", "?")
    dropped = manifest.get("dropped_prompt_pairs") or {}
    return {"model": str(name), "model_details": ", ".join(f"{k} {pretty(v)}" for k, v in model.items()),
            "task": str((config.get("task") or {}).get("name", "?")), "n_pairs": str(manifest.get("n_prompt_pairs", "?")),
            "templates": templates_view(manifest.get("templates")),
            "dropped": ", ".join(f"{k}: {v}" for k, v in dropped.items()) or "none", "sweep_points": str(manifest.get("n_sweep_points", "?"))}


def figures(run_dir: Path, manifest: dict) -> list[dict]:
    """Each figure inlined; one that is not a whole PNG is named with what is wrong instead (`circuitlab figures`
    redraws it)."""
    out = []
    for png in files.figure_files(run_dir, manifest):
        try:
            uri, problem = inline.png_data_uri(png), ""
        except CircuitlabError as err:
            uri, problem = None, f"{err.why}; `circuitlab figures {run_dir}` redraws it"
            warnings.warn(f"{err}: not shown in the report; `circuitlab figures {run_dir}` redraws it", stacklevel=2)
        out.append({"name": png.name, "stem": png.stem, "uri": uri, "problem": problem, "pdf": png.with_suffix(".pdf").exists()})
    return out


def side_tables(run_dir: Path, method: str | None, manifest: dict) -> list[dict]:
    out = []
    for path in files.side_tables(run_dir):
        table = tables.side_table(path, method, runfiles.record_of(manifest, path.name))
        out.append({"name": path.name, "download": inline.download(path),
                    "table": table if isinstance(table, tables.Table) else None, "note": table.note if isinstance(table, tables.Table) else table})
    return out


def baseline_gap_reason(manifest: dict) -> str | None:
    """Why the run's normalised scores are NaN (the manifest's `baseline_gap`, metrics.gap_record), if they are."""
    gap = manifest.get("baseline_gap")
    return str(gap.get("reason")) if isinstance(gap, dict) and gap.get("reason") else None


def manifest_entries(manifest: dict) -> dict:
    timings = manifest.get("wall_time_seconds") or {}
    total = sum(v for v in timings.values() if is_number(v))
    extra = [(k, pretty(v)) for k, v in manifest.items() if k not in KNOWN_MANIFEST]
    extra += [("seed", manifest.get("seed")), ("shard", pretty(manifest.get("shard"))), ("chunks", pretty(manifest.get("chunks")))]
    return {"timings": [*((k, pretty(v)) for k, v in timings.items()), ("total", number(total))] if timings else [],
            "versions": [*(manifest.get("versions") or {}).items(), ("git commit", manifest.get("git_commit") or "?")],
            "other": [(k, v) for k, v in extra if v is not None]}


def report_data(run_dir: Path) -> dict:
    """Everything report.html shows of `run_dir`; a run with a damaged file of its own is refused in one line
    naming the file (runfiles.DamagedFile), so that no page is made from a part of it."""
    import yaml

    from circuitlab.figures import check_readable

    run_dir = Path(run_dir)
    manifest = check_readable(run_dir)
    config = files.read_config(run_dir, manifest)
    results, problem = files.read_results_safely(run_dir)
    method = (config.get("method") or {}).get("name")
    status = files.run_status(run_dir)
    inputs = manifest.get("inputs") or files.read_json(run_dir / "inputs.json") or {}
    has_rows = results is not None and len(results) > 0
    return {
        "title": f"circuitlab · {manifest.get('experiment', run_dir.name)}",
        "experiment": str(manifest.get("experiment") or config.get("name") or run_dir.name), "method": str(method or "?"),
        "model": str((config.get("model") or {}).get("name", "?")), "status": status, "device": str(manifest.get("device", "")),
        "summary": summary(run_dir, manifest, config, results, problem, method, status),
        "data": model_and_data(manifest, config),
        "baselines": tables.baselines_table(manifest),
        "baseline_gap": baseline_gap_reason(manifest),
        "config_yaml": yaml.safe_dump(config, sort_keys=False, default_flow_style=None),
        "inputs_json": json.dumps(inputs, indent=2, default=str) if inputs else None,
        "figures": figures(run_dir, manifest),
        "results": tables.main_table(results, key_metric(results, method), RunContext.of(run_dir)) if has_rows else None,
        "results_problem": problem or "results.csv holds no rows",
        "results_download": inline.download(run_dir / "results.csv") if has_rows else None,
        "side_tables": side_tables(run_dir, method, manifest),
        "records": files.json_records(run_dir),
        "examples": prompts.examples(run_dir),
        "manifest": manifest_entries(manifest),
    }
