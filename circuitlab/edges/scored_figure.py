"""`edge_scores.png`: the edges a run scored, ranked by |score|, for a run that scored only some of the model's edges
(`method.sample`, `method.edges`, one shard): no circuit or faithfulness curve is cut from a part of the edges, but
the scores themselves are the result. From edges.csv alone: pandas + plotnine."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotnine as p9

from circuitlab.plotting import save

TOP = 40  # edges drawn, the largest |score| first


def scored_edges(edges: pd.DataFrame, out_dir: Path, title: str) -> list[Path]:
    """Horizontal bars of the TOP scored edges by |score|, coloured by sign; [] when no edge has a score."""
    scored = edges[edges["score"].notna()].copy()
    if scored.empty:
        return []
    scored = scored.loc[scored["score"].abs().sort_values(ascending=False, kind="stable").index]
    top = scored.head(TOP).copy()
    top["edge"] = pd.Categorical(top["edge"], categories=list(top["edge"])[::-1])  # the largest at the top
    top["sign"] = top["score"].map(lambda v: "carries the clean answer (+)" if v >= 0 else "works against it (-)")
    shown = "" if len(scored) <= TOP else f"; the {TOP} largest |scores| shown"
    shown += "; every score is 0" if not scored["score"].abs().gt(0).any() else ""
    plot = (
        p9.ggplot(top, p9.aes("edge", "score", fill="sign"))
        + p9.geom_col()
        + p9.geom_hline(yintercept=0, color="grey")
        + p9.coord_flip()
        + p9.scale_fill_manual(values={"carries the clean answer (+)": "#b2182b", "works against it (-)": "#2166ac"})
        + p9.labs(x="", y="score (drop of the mean logit difference when the edge alone is patched)", fill="edge",
                  title=f"{title}: scored edges", subtitle=f"{len(scored)} edges scored{shown}; no circuit is cut from a part of the model's edges")
        + p9.theme_minimal()
    )
    return save(plot, out_dir, "edge_scores", width=9.0, height=2.0 + 0.24 * len(top))

