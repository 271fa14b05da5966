"""Hypotheses compared (`method.hypotheses`): from the rows of each hypothesis' fit, which hypothesis each location
supports best, by how much, and each hypothesis' margin over the best of the others (pandas only: the run writes
hypotheses.csv with it and `circuitlab figures` redraws from results.csv)."""

from __future__ import annotations

import pandas as pd

WHERE = ["stream", "layer", "head", "heads", "group", "position", "position_label"]


def _iia_by_hypothesis(rows: pd.DataFrame, names: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """[location x hypothesis] IIA (locations in row order) and the hypotheses in their order."""
    hyp = rows["hypothesis"].fillna("").astype(str) if "hypothesis" in rows.columns else pd.Series("", index=rows.index)
    iia = rows[(rows["metric"] == "iia") & (hyp != "")].copy()
    iia["hypothesis"] = hyp[iia.index]
    names = names or list(dict.fromkeys(iia["hypothesis"]))
    where = [c for c in WHERE if c in iia.columns]
    keys = [tuple("" if pd.isna(v) else v for v in row) for row in iia[where].itertuples(index=False)]
    locations = list(dict.fromkeys(keys))
    value = dict(zip(zip(keys, iia["hypothesis"]), iia["value"].astype(float)))
    wide = pd.DataFrame([[value.get((key, name), float("nan")) for name in names] for key in locations], columns=names,
                        index=pd.MultiIndex.from_tuples(locations, names=where))
    return wide, names


def hypothesis_table(rows: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """One row per location: each hypothesis' IIA (`iia_<name>`), the best one, the runner-up and the gap between
    them (0: a tie, the first of the tied in `names` order named best)."""
    wide, names = _iia_by_hypothesis(rows, names)
    out = wide.index.to_frame(index=False)  # (a hypothesis may share a location column's name: `position`)
    values = wide.to_numpy()
    order = (-values).argsort(axis=1, kind="stable")
    best, second = order[:, 0], order[:, 1]
    for j, name in enumerate(names):
        out[f"iia_{name}"] = values[:, j]
    rows_index = range(len(out))
    out["best"] = [names[b] for b in best]
    out["iia_best"] = [values[i, b] for i, b in zip(rows_index, best)]
    out["runner_up"] = [names[b] for b in second]
    out["iia_runner_up"] = [values[i, b] for i, b in zip(rows_index, second)]
    out["gap"] = out["iia_best"] - out["iia_runner_up"]
    return out.replace({"": None})


def margins(rows: pd.DataFrame) -> pd.DataFrame:
    """Each hypothesis' IIA minus the best IIA of the others, at every location (> 0 where it wins, by the gap to
    the runner-up), as rows with `hypothesis`, `value` and the location columns."""
    wide, names = _iia_by_hypothesis(rows)
    parts = []
    for name in names:
        others = wide.drop(columns=[name]).max(axis=1)
        parts.append(wide.index.to_frame(index=False).assign(value=(wide[name] - others).to_numpy(), hypothesis=name))
    out = pd.concat(parts, ignore_index=True)
    return out.replace({"": None})
