"""Metrics read from final-position logits, per sweep point (mean over prompts), and the degenerate-baseline rule
every method applies before it divides by the clean - corrupted gap (`usable_gap`)."""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

METRICS = ("logit_diff", "accuracy", "kl", "prob", "output_change")
NUMERIC_ATOL = 1e-3


def logit_diff(
    final_logits: Float[Tensor, "... batch vocab"], answer: Int[Tensor, " batch"], wrong: Int[Tensor, " batch"]
) -> Float[Tensor, "... batch"]:
    """logit(answer) - logit(wrong), per prompt (leading dims, e.g. sweep points, are kept)."""
    index = answer.expand(final_logits.shape[:-1])[..., None]
    wrong_index = wrong.expand(final_logits.shape[:-1])[..., None]
    return (final_logits.gather(-1, index) - final_logits.gather(-1, wrong_index)).squeeze(-1)


# The degenerate-baseline rule. A normalised score divides by the gap between the two baselines' mean logit
# differences (clean - corrupted; for the edge methods full circuit - empty circuit). Where that gap is below
# max(GAP_ATOL, GAP_RTOL x the larger |logit difference| of the two), it is float noise or too small to normalise
# by (identical prompts give ~1e-7; a gap of 1% of the logit differences turns a 0.01 change into 25%): every score
# divided by it is NaN, and the run says why in one warning and in the manifest's `baseline_gap` (`gap_record`).
GAP_ATOL = 1e-3  # logits: ~100x the float32 noise of a 30-layer forward
GAP_RTOL = 1e-2  # of the larger |logit difference| of the two baselines


def degenerate_gap(clean: float, corrupted: float) -> str | None:
    """Why `clean - corrupted` cannot normalise a score, in one sentence; None when it can."""
    clean, corrupted = float(clean), float(corrupted)
    if not (math.isfinite(clean) and math.isfinite(corrupted)):
        return f"a baseline logit difference is not a number (clean {clean}, corrupted {corrupted})"
    limit = max(GAP_ATOL, GAP_RTOL * max(abs(clean), abs(corrupted)))
    if abs(clean - corrupted) >= limit:
        return None
    return (f"the clean - corrupted gap of the mean logit difference is {clean - corrupted:.3g} (clean {clean:.4g}, corrupted "
            f"{corrupted:.4g}), below {limit:.3g} = max({GAP_ATOL:g}, {GAP_RTOL:g} x the larger |logit difference|)")


def usable_gap(clean: float, corrupted: float) -> float:
    """clean - corrupted, the denominator of every normalised score; NaN when `degenerate_gap` refuses it."""
    return float("nan") if degenerate_gap(clean, corrupted) else float(clean) - float(corrupted)


def gap_record(clean: dict[str, float], corrupted: dict[str, float]) -> dict | None:
    """The manifest's `baseline_gap` when a run's baselines (`MethodOutput.clean` / `.corrupted`) fail the rule:
    both logit differences, the gap, the threshold and the reason; None when they pass or a baseline is missing."""
    if "logit_diff" not in clean or "logit_diff" not in corrupted:
        return None
    c, k = float(clean["logit_diff"]), float(corrupted["logit_diff"])
    reason = degenerate_gap(c, k)
    if reason is None:
        return None
    limit = max(GAP_ATOL, GAP_RTOL * max(abs(c), abs(k))) if math.isfinite(c) and math.isfinite(k) else None
    finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731  strict JSON: no NaN
    return {"clean": finite(c), "corrupted": finite(k), "gap": finite(c - k), "threshold": limit,
            "reason": f"{reason}: every score normalised by it is NaN"}


def normalized_recovery(patched: Tensor, corrupted: float, clean: float) -> Tensor:
    """(patched - corrupted) / (clean - corrupted): 0 = the corrupted run's value, 1 = the clean run's; NaN where
    the gap fails the degenerate-baseline rule (`usable_gap`).

    Denoising reads it as the share of clean behaviour a patch restores; noising (same formula) reads 1 as
    "the patch changed nothing" and 0 as "the patch destroyed the clean behaviour entirely".
    """
    return (patched - corrupted) / usable_gap(clean, corrupted)


def point_metrics(
    final_logits: Float[Tensor, "point batch vocab"],
    answer: Int[Tensor, " batch"],
    wrong: Int[Tensor, " batch"],
    names: tuple[str, ...],
    clean_logits: Float[Tensor, "batch vocab"] | None = None,
    tracked: dict[str, int] | None = None,
    labels_differ: Bool[Tensor, " batch"] | None = None,
) -> dict[str, Float[Tensor, " point"]]:
    """Each requested metric, averaged over prompts: logit_diff, accuracy (argmax == answer), kl
    (KL(clean || patched) of the next-token distribution), prob (P(token) of each tracked token, as
    `prob:<token>`) and output_change (InterpBench's causal effect, see `output_changed`)."""
    out: dict[str, Tensor] = {}
    logits = final_logits.float()
    if "logit_diff" in names:
        out["logit_diff"] = logit_diff(logits, answer, wrong).mean(-1)
    if "accuracy" in names:
        out["accuracy"] = (logits.argmax(-1) == answer).float().mean(-1)
    if "output_change" in names:
        out["output_change"] = output_changed(logits, clean_logits.float(), labels_differ)
    if "kl" in names or "prob" in names:
        log_probs = torch.log_softmax(logits, dim=-1)
        if "kl" in names:
            clean = torch.log_softmax(clean_logits.float(), dim=-1)
            out["kl"] = (clean.exp() * (clean - log_probs)).sum(-1).mean(-1)
        if "prob" in names:
            for label, token in (tracked or {}).items():
                out[f"prob:{label}"] = log_probs[..., token].exp().mean(-1)
    return out


def output_changed(
    logits: Float[Tensor, "... batch vocab"], clean_logits: Float[Tensor, "batch vocab"], labels_differ: Bool[Tensor, " batch"],
    atol: float = NUMERIC_ATOL,
) -> Float[Tensor, "..."]:
    """InterpBench's causal effect: among the pairs whose clean and corrupted labels differ, the fraction whose
    output changes from the clean run's: the argmax token, or for a numeric output (vocab of 1) a change
    larger than `atol`."""
    if logits.shape[-1] == 1:
        changed = (logits[..., 0] - clean_logits[..., 0]).abs() > atol
    else:
        changed = logits.argmax(-1) != clean_logits.argmax(-1)
    differ = labels_differ.to(logits.device)
    return (changed & differ).float().sum(-1) / differ.sum().clamp(min=1)
