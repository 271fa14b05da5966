"""A run's memory record for the manifest: its peak resident memory, per phase, beside the weights' size and the
budget.

On Linux the kernel's peak-RSS mark (VmHWM) is reset when a run starts and between its phases
(`/proc/self/clear_refs`), so each run of a multirun process, and each phase (loading the model, the method's work),
has its own peak; where it cannot be reset the peak is the process's so far (`scope` says which). On CUDA the
allocator's peak is recorded too.
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


class PeakMeter:
    """Peak resident memory per phase of a run: `mark(phase)` records the peak since the previous mark (or the start)
    and starts counting again (where the kernel's mark cannot be reset, each phase's value is the process's peak so
    far)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.resettable = reset_peak(self.device)
        self.phases: dict[str, int] = {}

    def mark(self, phase: str) -> int:
        self.phases[phase] = peak_rss_mb()
        if self.resettable:
            reset_peak(self.device)
        return self.phases[phase]

    def record(self, model: torch.nn.Module, budget_mb: int) -> dict:
        """manifest["memory"]: peak_rss_mb (the run's), by_phase, weights_mb, budget_mb (the activation budget the run
        was given), scope ("run": since this run started; "process": the process's peak so far) and, on CUDA,
        cuda_peak_mb."""
        out = {"peak_rss_mb": max(self.phases.values(), default=peak_rss_mb()), "by_phase": dict(self.phases),
               "weights_mb": weights_mb(model), "budget_mb": int(budget_mb), "scope": "run" if self.resettable else "process"}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20)
        return out
