"""A run's key number: one value a researcher would quote, chosen by a rule that is stated beside it (report.html,
index.html, `Result.key_number`). Pandas only, from the run dir's files.

The largest |value| of a sweep is often large by construction: patching the whole residual stream at the only
position where the two prompts differ restores everything (≈ 1) until the information has moved on, and patching it
at the final position restores everything once it has arrived; a scale-10 ablation is ten times a plain one. So:

- edge methods (a circuit was cut): the faithfulness of that circuit (faithfulness.csv's `circuit` row);
- ablations with scales: only the plain ablation (scale 1; else the scale nearest 1);
- head groups: leave-one-out, the group with the lowest value (the head whose removal costs most); cumulative, the
  smallest group that reaches 90 % of the largest value;
- the residual stream alone, over several layers: the first layer at which it carries at least half of its largest
  value at the final position (END): where the information has arrived;
- otherwise the largest |value|, leaving out the whole residual stream when components (attention and MLP outputs,
  heads, ...) were swept beside it, and the positions where the two prompts differ when others were swept too (a
  component there writes the changed token itself: MLP 0 at the changed name restores ≈ 1 on SmolLM2); what is left
  is information moved to where it is read.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from circuitlab.tokens import RunContext

RESIDUAL = {"resid_pre": 0.0, "block_input": 0.0, "resid_mid": 0.5, "resid_post": 1.0, "block_output": 1.0}  # depth in a layer
CUMULATIVE_SHARE = 0.9
ARRIVED_SHARE = 0.5


def method_record(name: str | None):
    from circuitlab.methods import registry

    return registry.METHODS.get(name) if name else None


def key_metric(results: pd.DataFrame, method: str | None) -> str | None:
    """The metric the report leads with: the method's `key_metric` when the run has it, else the first
    `*_normalized` metric, else the first."""
    metrics = list(dict.fromkeys(results["metric"])) if "metric" in results.columns else []
    if not metrics:
        return None
    record = method_record(method)
    if record is not None and getattr(record, "key_metric", None) in metrics:
        return record.key_metric
    return next((m for m in metrics if m.endswith("_normalized")), metrics[0])


def text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def position_words(label: str, context: RunContext) -> str:
    """A position as the report says it: its role where the task names one, with the index and the first prompt's
    token (`S2 (position 10; the first prompt's 'Jessica')`); a named position as it is."""
    shown = context.position(label)
    index, sep, rest = shown.partition(":")
    if not (sep and index.lstrip("-").isdigit()):
        return shown
    token, _, role = rest.partition(" (")
    token_words = f"the first prompt's '{token}'"
    return f"{role.rstrip(')')} (position {index}; {token_words})" if role else f"position {index} ({token_words})"


def describe_location(row: pd.Series, columns: list[str], context: RunContext | None = None) -> str:
    """Where a row is, in words, from the location columns that vary in the run."""
    context = context or RunContext()
    edge = text(row.get("sender")) != "" and text(row.get("receiver")) != ""  # an edge: its name says where
    parts = []
    for column in columns:
        value = row.get(column)
        if text(value) == "" or (edge and column in ("layer", "head", "heads", "stream")):
            continue
        if column == "layer":
            parts.append(f"L{value}")
        elif column in ("head", "position"):
            continue  # heads / position_label say it
        elif column == "position_label":
            parts.append(f"at {position_words(str(value), context)}")
        elif column == "heads":
            parts.append(f"heads {value}" if "," in str(value) else f"head {value}")
        elif column == "scale":
            parts.append(f"scale {float(value):.4g}")
        elif column == "in_circuit":
            parts.append("in circuit" if str(value) == "True" else "not in circuit")
        elif column == "receiver":
            sender = row.get("sender") if "sender" in columns else None
            parts.append(f"{sender} → {value}" if isinstance(sender, str) and sender else f"→ {value}")
        elif column == "sender":
            continue  # with its receiver
        else:
            parts.append(str(value))
    return " ".join(parts)


def location_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("experiment", "method", "metric", "value")]


def largest(rows: pd.DataFrame) -> pd.Series:
    return rows.loc[rows["value"].abs().idxmax()]


def final_position(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows at the position where the answer is read: END, else the largest position index."""
    positions = rows["position"].astype(str)
    if (positions == "END").any():
        return rows[positions == "END"]
    numeric = pd.to_numeric(positions, errors="coerce")
    return rows[numeric == numeric.max()] if numeric.notna().any() else rows.iloc[0:0]


def differing_positions(rows: pd.DataFrame, run_dir: Path | None) -> set[str]:
    """The `position` values (an index, indices joined by commas, a named position, all) that cover a token where some
    pair's two prompts differ (examples.json's `differ` and `roles`)."""
    from circuitlab.runfiles import read_examples

    try:
        examples = (read_examples(run_dir) if run_dir is not None else None) or {}
    except ValueError:  # a damaged examples.json (runfiles.DamagedFile): no position is known to differ
        return set()
    differ = {int(i) for i in (examples.get("differ") or {})}
    roles = examples.get("roles") or {}
    pairs = [p for p in examples.get("pairs") or [] if isinstance(p, dict)]
    if "differ" not in examples:  # a run from before `differ`: its example pairs say it
        differ = {i for p in pairs for i, (a, b) in enumerate(zip(p.get("clean", []), p.get("corrupted", []))) if a != b}
        roles = {label: {str(index)} for p in pairs for label, index in (p.get("positions") or {}).items()}
        for p in pairs:
            for label, index in (p.get("positions") or {}).items():
                roles[label].add(str(index))
    out = set()
    for value in rows["position"].dropna().astype(str).unique():
        if value == "all":
            indices = differ
        elif value in roles:
            indices = {int(i) for i in roles[value]}
            indices = indices if indices <= differ else set()  # a named position differs when it does in every pair
        else:
            indices = {int(i) for i in value.split(",") if i.strip().lstrip("-").isdigit()}
        if indices & differ:
            out.add(value)
    return out


def choose(rows: pd.DataFrame, differing: set[str] = frozenset()) -> tuple[pd.Series, str]:
    """The quoted row of the key metric and the rule that chose it (see the module docstring); `differing`: the
    position values where the two prompts differ."""
    if not rows["value"].abs().max() > 0:
        return rows.iloc[0], "every value is 0"
    if "scale" in rows.columns and rows["scale"].notna().any():
        scales = rows["scale"].dropna().astype(float)
        plain = scales.iloc[(scales - 1.0).abs().argmin()]
        rows = rows[rows["scale"].astype(float) == plain]
        scale_rule = f"at scale {plain:g} (the plain ablation: other scales multiply the patched value)"
        return largest(rows), f"largest |value| {scale_rule}"
    groups = rows["group"].fillna("").astype(str) if "group" in rows.columns else pd.Series("", index=rows.index)
    if (groups == "leave_one_out").all():
        return rows.loc[rows["value"].idxmin()], "leave-one-out groups: the lowest value (the head whose removal costs most)"
    if (groups == "cumulative").all():
        enough = rows[rows["value"] >= CUMULATIVE_SHARE * rows["value"].max()]
        sizes = enough["heads"].fillna("").astype(str).str.count(",") + 1
        return enough.loc[sizes.idxmin()], f"cumulative groups: the fewest heads that reach {CUMULATIVE_SHARE:.0%} of the largest value"
    residual = rows["stream"].isin(list(RESIDUAL))
    if residual.all() and rows["layer"].nunique() > 1 and arrival(rows) is not None:
        return arrival(rows), ARRIVAL_RULE
    left_out = []
    kept = rows
    if residual.any() and (~residual).any():
        kept = kept[~residual]
        left_out.append("the whole residual stream (at a position it carries everything there: ≈ 1 at the changed token "
                        "until the information moves on, and at the final position once it has arrived)")
    at_change = kept["position"].astype(str).isin(differing)
    if at_change.any() and (~at_change).any():
        kept = kept[~at_change]
        left_out.append("the positions where the two prompts differ (a component there writes the changed token itself)")
    if not left_out:
        return largest(rows), "largest |value|"
    if kept["value"].abs().max() > 0:
        return largest(kept), f"largest |value| leaving out {' and '.join(left_out)}: an effect of information moved to where it is read"
    if residual.any() and rows.loc[residual, "layer"].nunique() > 1 and arrival(rows[residual]) is not None:
        return arrival(rows[residual]), "every component elsewhere is 0; " + ARRIVAL_RULE
    return largest(rows), "largest |value| (every cell but the residual stream and the changed token is 0)"


ARRIVAL_RULE = (f"the residual stream alone: the first layer where it carries at least {ARRIVED_SHARE:.0%} of its largest value "
                "at the final position, where the information has arrived (a whole-stream sweep's largest cells sit at the "
                "changed token before the information moves and at the end after)")


def arrival(rows: pd.DataFrame) -> pd.Series | None:
    """The residual-stream row at the final position of the least depth that reaches ARRIVED_SHARE of the largest
    |value| there; None when the final position was not swept or is 0 throughout."""
    end = final_position(rows)
    if not len(end) or not end["value"].abs().max() > 0:
        return None
    depth = end["layer"].astype(float) + end["stream"].map(RESIDUAL)
    enough = end[end["value"].abs() >= ARRIVED_SHARE * end["value"].abs().max()]
    return enough.loc[depth[enough.index].idxmin()]


def circuit_faithfulness(run_dir: Path | None) -> dict | None:
    """faithfulness.csv's `circuit` row (an edge method's circuit.json) or, for an ablation with a declared circuit,
    its row at the scale nearest 1; None when there is neither."""
    if run_dir is None or not (Path(run_dir) / "faithfulness.csv").is_file():
        return None
    from circuitlab.errors import CircuitlabError
    from circuitlab.runfiles import read_table

    try:
        table = read_table(Path(run_dir) / "faithfulness.csv")
    except CircuitlabError as err:  # a damaged side table: no circuit number, and no other number in its place
        return {"metric": "faithfulness", "value": None, "where": "", "n": 0, "rule": str(err)}
    if {"scale", "faithfulness", "n_ablated"} <= set(table.columns) and table["faithfulness"].notna().any():
        table = table[table["faithfulness"].notna()]
        row = table.iloc[(table["scale"].astype(float) - 1.0).abs().argmin()]
        return {"metric": "faithfulness", "value": float(row["faithfulness"]), "n": len(table),
                "where": f"the declared circuit, the other {int(row['n_ablated'])} nodes ablated at scale {float(row['scale']):g}",
                "rule": "an ablation with a declared circuit: the share of the model's logit difference the circuit keeps "
                        "with everything else ablated, at the plain scale (1, or the nearest)"}
    if not {"ranking", "faithfulness", "edges_kept"} <= set(table.columns):
        return None
    circuit = table[table["ranking"] == "circuit"]
    if not len(circuit) or pd.isna(circuit["faithfulness"].iloc[0]) or not circuit["edges_kept"].iloc[0] > 0:
        return None  # no circuit (or an empty one, nothing connected the input to the logits): the edges' own scores
    row = circuit.iloc[0]
    return {"metric": "faithfulness", "value": float(row["faithfulness"]), "where": f"circuit.json's {int(row['edges_kept'])} edges",
            "n": 1, "rule": "an edge method's circuit: the share of the model's logit difference its circuit keeps "
                            "(1 = the whole model, 0 = every edge ablated)"}


def main_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the result itself: those with no value in a registered method's variant columns (DAS's control and
    hypothesis rows are beside the result, never its key number)."""
    from circuitlab.methods import registry

    keep = pd.Series(True, index=rows.index)
    for column in registry.variant_columns():
        if column in rows.columns:
            keep &= rows[column].astype("string").fillna("") == ""
    return rows[keep]


def key_number(results: pd.DataFrame, method: str | None, run_dir: Path | None = None) -> dict | None:
    """{metric, value, where, n, rule}: the run's key number, where it is, how many values it was chosen from and
    the rule that chose it; None without a metric."""
    circuit = circuit_faithfulness(run_dir)
    if circuit is not None:
        return circuit
    metric = key_metric(results, method)
    if metric is None:
        return None
    rows = main_rows(results[(results["metric"] == metric) & results["value"].notna()])
    if not len(rows):
        return {"metric": metric, "value": None, "where": "", "n": 0, "rule": ""}
    best, rule = choose(rows, differing_positions(rows, run_dir))
    varying = [c for c in location_columns(results) if results[c].astype(str).nunique() > 1]
    context = RunContext.of(run_dir) if run_dir is not None else RunContext()
    return {"metric": metric, "value": float(best["value"]), "where": describe_location(best, varying, context), "n": int(len(rows)),
            "rule": rule}
