"""Metrics read from final-position logits, per sweep point (mean over prompts)."""

from __future__ import annotations

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


def normalized_recovery(patched: Tensor, corrupted: float, clean: float) -> Tensor:
    """(patched - corrupted) / (clean - corrupted): 0 = the corrupted run's value, 1 = the clean run's.

    Denoising reads it as the share of clean behaviour a patch restores; noising (same formula) reads 1 as
    "the patch changed nothing" and 0 as "the patch destroyed the clean behaviour entirely".
    """
    return (patched - corrupted) / (clean - corrupted)


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
