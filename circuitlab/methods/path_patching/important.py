"""Reading path patching's results: senders named as the IOI paper names them, the senders above the thresholds,
the heads whose attention patterns are drawn."""

from __future__ import annotations

from torch import Tensor

from circuitlab.locations import Location


def sender_label(loc: Location) -> str:
    """`L.H` for a head, `L.H+H` for a head group, `attn L` / `mlp L` for whole layers."""
    if loc.stream == "z" and loc.heads is not None:
        return f"{loc.layer}." + "+".join(map(str, loc.heads))
    return f"{'mlp' if loc.stream == 'mlp_out' else 'attn'} {loc.layer}"


def important_senders(senders: list[Location], variation: Tensor, thresholds: list[float]) -> "pd.DataFrame":
    """Senders whose |variation| exceeds the smallest threshold, largest first, with the largest threshold each
    one passes (the seed's "rel_diff > 0.05" and "0.05 > rel_diff > 0.02" lists)."""
    import pandas as pd

    columns = ["sender", "stream", "layer", "head", "logit_diff_variation", "above"]
    if not thresholds:
        return pd.DataFrame(columns=columns)
    rows = []
    for loc, value in zip(senders, variation.tolist()):
        passed = [t for t in thresholds if abs(value) > t]
        if passed:
            rows.append({"sender": sender_label(loc), "stream": loc.stream, "layer": loc.layer, "head": loc.head,
                         "logit_diff_variation": value, "above": max(passed)})
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values("logit_diff_variation", key=abs, ascending=False, ignore_index=True)


def describe_important(important: "pd.DataFrame", thresholds: list[float]) -> list[str]:
    """One log line per threshold band, e.g. `|variation| > 0.05: 1.2 (-0.41), 0.3 (+0.07)`."""
    lines = []
    for i, threshold in enumerate(sorted(thresholds, reverse=True)):
        band = important[important["above"] == threshold]
        upper = "" if i == 0 else f" (and <= {sorted(thresholds, reverse=True)[i - 1]})"
        found = ", ".join(f"{s} ({v:+.3f})" for s, v in zip(band["sender"], band["logit_diff_variation"])) or "none"
        lines.append(f"|logit diff variation| > {threshold}{upper}: {found}")
    return lines


def top_heads(senders: list[Location], variation: Tensor, threshold: float, limit: int = 8) -> list[tuple[int, int]]:
    """Single-head senders above `threshold` by |variation| (at most `limit`); the top 4 if none is."""
    singles = [(abs(v), loc.layer, loc.head) for loc, v in zip(senders, variation.tolist()) if loc.stream == "z" and loc.head is not None]
    singles.sort(reverse=True)
    above = [(layer, head) for value, layer, head in singles if value > threshold]
    return above[:limit] if above else [(layer, head) for _, layer, head in singles[:4]]
