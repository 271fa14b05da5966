"""Checks of single config values, shared by plan.py's generic checks and each method's own `validate`: a value
out of range ends in one line naming the field, the value and what is allowed (`ConfigError`, exit code 2)."""

from __future__ import annotations

import math

from omegaconf import OmegaConf

from circuitlab.errors import ConfigError


def require_number(field: str, value, *, integer: bool = False, minimum: float | None = None, above: float | None = None,
                   maximum: float | None = None) -> None:
    """`value` is a finite number (an integer when `integer`) with minimum <= value, above < value, value <= maximum."""
    kind = (int,) if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (above is None or value > above) and (maximum is None or value <= maximum)
    if not ok:
        if integer and minimum == 1 and maximum is None:
            allowed = "a positive integer"
        elif integer and minimum is not None and maximum is not None:
            allowed = f"an integer from {int(minimum)} to {int(maximum)}"
        else:
            bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
                      f"<= {maximum:g}" if maximum is not None else ""]
            allowed = " ".join(["an integer" if integer else "a finite number", *[b for b in bounds if b]])
        raise ConfigError(field, value, allowed)


def require_list(field: str, value, example: str) -> None:
    """A list setting that must name at least one thing (null and [] are refused)."""
    if value is None or (isinstance(value, (list, tuple)) and not value) or (OmegaConf.is_list(value) and not len(value)):
        raise ConfigError(field, "null" if value is None else "[]", f"one or more values, e.g. {example}")


# What a method that plans no sweep points (it reads the whole model: the edge methods, direct attribution) accepts in
# the sweep group: the values the shipped configs give it (the main config's sweep and sweep=senders). Anything else
# would be ignored without a word, so it is refused.
WHOLE_MODEL_SWEEP = {
    "streams": (["resid_pre"], ["head_attention_value_output"]),
    "layers": ("all",),
    "positions": ("every", ["all"]),
    "heads": (None,),
    "head_order": (None,),
}


def refuse_sweep_keys(cfg, reads: str, accepted: dict | None = None) -> None:
    """Refuse, in one line, a sweep key that a method reading the whole model would ignore. `reads`: what the
    method reads instead (for the message); `accepted`: values it accepts beyond WHOLE_MODEL_SWEEP's, by key."""
    from circuitlab.config import plain

    def shown(value) -> str:
        return "null" if value is None else f"[{', '.join(map(str, value))}]" if isinstance(value, list) else str(value)

    for key, values in {**WHOLE_MODEL_SWEEP, **(accepted or {})}.items():
        value = plain(cfg.sweep.get(key))
        if value not in values:
            raise ConfigError(f"sweep.{key}", shown(value), " or ".join(shown(v) for v in values),
                              hint=f"method={cfg.method.name} {reads}; it plans no sweep points, so sweep.{key} would be ignored")
