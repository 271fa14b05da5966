"""`threads: null | N`: torch's intra-op threads for a run (`torch.set_num_threads`).

On a shared machine, torch's default (one thread per core, or OMP_NUM_THREADS) oversubscribes the cores as soon as
another process computes too, and batched forwards slow down far more than a plain loop does; `threads=1` per
process avoids that. `null` keeps torch's default: the count this process had when circuitlab first set it, so that
a notebook that ran `threads=1` gets the default back on its next run. torch is imported only to apply the setting.
"""

from __future__ import annotations

from circuitlab.errors import ConfigError

ALLOWED = "null (torch's default) or a positive integer (torch's intra-op threads)"
_DEFAULT: int | None = None  # torch's count before circuitlab first set it


def check(value) -> None:
    """`value` is null or a positive integer; one line otherwise."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("threads", value, ALLOWED)


def apply(value) -> int:
    """Check `value`, set torch's intra-op threads to it (null: torch's default) and return the count now in use."""
    global _DEFAULT
    check(value)
    import torch

    if _DEFAULT is None:
        _DEFAULT = torch.get_num_threads()
    wanted = _DEFAULT if value is None else int(value)
    if torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)
    return wanted


def record(value) -> dict:
    """The manifest's line: the setting and the count torch used."""
    import torch

    return {"setting": value, "torch_threads": torch.get_num_threads()}
