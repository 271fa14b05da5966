"""Files written atomically and read back: every write goes to a temporary file beside its target, takes the
umask's mode and is renamed into place, so a killed process never leaves half a file under the real name. Text,
JSON, CSV and tensors (`.pt`, read back with weights_only=True). torch is imported only by the tensor functions."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

_UMASK: int | None = None


def umask() -> int:
    """This process's umask (read once per process: reading it means setting it for a moment)."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """The mode a plain `open()` gives a new file under the umask."""
    return 0o666 & ~umask()


def atomic_write(path: Path, write: Callable[[Path], None], suffix: str = ".tmp") -> None:
    """Call `write(tmp)` on a temporary file beside `path` (a name no other process uses; `suffix` ends it, e.g.
    for writers that go by the extension), give it the umask's mode, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, file_mode())  # mkstemp makes it 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


NULL_REASONS = "null_reasons"


def write_json(path: Path, data) -> None:
    """Strict JSON (every circuitlab JSON file is written here): a NaN or infinite number becomes null, and a dict
    says why in `null_reasons` ({"baselines.clean.logit_diff": "NaN: not a number"}); allow_nan=False, so that
    nothing else can slip through."""
    reasons: dict[str, str] = {}
    clean = strict_json(data, "", reasons)
    if reasons and isinstance(clean, dict):
        clean = {**clean, NULL_REASONS: {**(clean.get(NULL_REASONS) or {}), **reasons}}
    write_text(path, json.dumps(clean, indent=2, default=str, allow_nan=False) + "\n")


def strict_json(value, where: str, reasons: dict[str, str]):
    """`value` with every non-finite number (Python's or numpy's) replaced by None, its path in `reasons`."""
    import math
    import numbers

    if isinstance(value, dict):
        return {k: strict_json(v, f"{where}.{k}" if where else str(k), reasons) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v, f"{where}[{i}]", reasons) for i, v in enumerate(value)]
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        if not math.isfinite(number):
            reasons[where or "(value)"] = "NaN: not a number" if math.isnan(number) else f"{number}: not a finite number"
            return None
        return number
    return value


def write_csv(path: Path, frame: "pd.DataFrame") -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_tensors(path: Path, data: dict) -> None:
    import torch

    atomic_write(path, lambda tmp: torch.save(data, tmp))


def load_tensors(path: Path) -> dict:
    """Read a `.pt` file written by circuitlab (safe: `weights_only=True`)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
