"""User-facing errors: one line naming the field, the bad value and the allowed values."""

from __future__ import annotations

from collections.abc import Iterable

EXIT_USAGE = 2


class CircuitlabError(ValueError):
    """An error caused by the user's input (a ValueError: a bad value or file). The CLI prints `str(err)` alone and
    exits with code 2; the notebook API raises it with the same one line."""


class ConfigError(CircuitlabError):
    """A config value is invalid."""

    def __init__(self, field: str, value: object, allowed: str | Iterable[object] | None = None, hint: str = ""):
        self.field, self.value = field, value
        message = f"{field}={value!s}: invalid"
        if allowed is not None:
            if not isinstance(allowed, str):
                allowed = ", ".join(str(a) for a in allowed)
            message = f"{field}={value!s} is not allowed; allowed: {allowed}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

