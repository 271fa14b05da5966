"""A run's memory record for the manifest: its peak resident memory beside the weights' size and the budget.

On Linux the kernel's peak-RSS mark (VmHWM) is reset when a run starts (`/proc/self/clear_refs`), so each run of a
multirun process has its own peak; where it cannot be reset the peak is the process's so far (`scope` says which).
On CUDA the allocator's peak is recorded too.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

STATUS, CLEAR_REFS = Path("/proc/self/status"), Path("/proc/self/clear_refs")


def reset_peak(device: str) -> bool:
    """Start counting this run's peak; False when only the process's peak can be read."""
    if str(device).startswith("cuda") and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    try:
        CLEAR_REFS.write_text("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def peak_rss_mb() -> int:
    """The peak resident memory in MiB: VmHWM where it exists, else getrusage's (bytes on macOS, KiB elsewhere)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak // 2**20 if sys.platform == "darwin" else peak // 1024)


def weights_mb(model: torch.nn.Module) -> float:
    """The model's parameters and buffers in MiB (one decimal)."""
    tensors = [*model.parameters(), *model.buffers()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


def record(model: torch.nn.Module, device: str, budget_mb: int, since_run_start: bool) -> dict:
    """manifest["memory"]: peak_rss_mb, weights_mb, budget_mb (the activation budget the run was given), scope
    ("run": since this run started; "process": the process's peak so far) and, on CUDA, cuda_peak_mb."""
    out = {"peak_rss_mb": peak_rss_mb(), "weights_mb": weights_mb(model), "budget_mb": int(budget_mb),
           "scope": "run" if since_run_start else "process"}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(torch.device(device)) / 2**20)
    return out
