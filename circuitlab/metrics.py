"""Metrics read from final-position logits."""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor


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
