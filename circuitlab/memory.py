"""A run's memory record for the manifest: its peak resident memory, per phase, beside the weights' size and the
budget.

The process's peak (the kernel's high-water mark, VmHWM: what `/usr/bin/time -v` reports) is never reset: it covers
everything this process did, earlier runs of a multirun included. A run's own peaks, per phase (loading the model,
the method's work), come from a thread that reads the resident size every 10 ms while the run lasts (a spike
shorter than that can be missed). Where /proc is missing (macOS), only getrusage's process peak is known. On CUDA
the allocator's peak is recorded too (reset when the run starts).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import weakref
from pathlib import Path

import torch

STATUS, STATM = Path("/proc/self/status"), Path("/proc/self/statm")
PAGE_MB = (os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096) / 2**20
INTERVAL_S = 0.01


def rss_mb() -> float | None:
    """The resident size now, in MiB (None without /proc)."""
    try:
        return int(STATM.read_text().split()[1]) * PAGE_MB
    except (OSError, IndexError, ValueError):
        return None


def process_peak_mb() -> int:
    """The process's peak resident memory in MiB: VmHWM where it exists, else getrusage's (bytes on macOS, KiB
    elsewhere)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / 2**20 if sys.platform == "darwin" else peak / 1024)


def release_freed() -> None:
    """Hand the heap memory freed so far back to the operating system (glibc's malloc_trim; nothing elsewhere).
    glibc keeps freed blocks of a phase's many tensors resident (SmolLM2-135M's EAP-IG scoring: 2.26 GB resident
    after it, 1.22 GB after the trim), so the next phase's own peak would start above the one before it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim
        pass


def weights_mb(model: torch.nn.Module) -> float:
    """The model's parameters and buffers in MiB (one decimal)."""
    tensors = [*model.parameters(), *model.buffers()]
    return round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 1)


class PeakMeter:
    """A run's peak resident memory per phase: `mark(phase)` closes the phase running since the previous mark (or
    since the meter was made) under that name. The sampling thread ends with the meter (or at `record`)."""

    def __init__(self, device: str):
        self.device = str(device)
        self.phases: dict[str, int] = {}
        self._current = rss_mb() or 0.0
        self._stop = threading.Event()
        if str(device).startswith("cuda") and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(torch.device(device))
        if rss_mb() is not None:
            threading.Thread(target=_sample, args=(weakref.ref(self), self._stop), daemon=True, name="circuitlab-memory").start()

    def observe(self) -> None:
        now = rss_mb()
        if now is not None and now > self._current:
            self._current = now

    def mark(self, phase: str) -> int:
        """The peak of the phase that ends now, in MiB (the process's peak so far where it cannot be sampled)."""
        self.observe()
        self.phases[phase] = round(self._current) if rss_mb() is not None else process_peak_mb()
        self._current = rss_mb() or 0.0
        return self.phases[phase]

    def record(self, model: torch.nn.Module, budget_mb: int) -> dict:
        """manifest["memory"]: peak_rss_mb (this run's), by_phase, process_peak_rss_mb (the process's, as
        /usr/bin/time reports it), weights_mb, budget_mb (the activation budget the run was given) and, on CUDA,
        cuda_peak_mb. Stops the sampling."""
        self._stop.set()
        process = process_peak_mb()  # the kernel batches its counters: a sample can read a MB above the high-water mark
        out = {"peak_rss_mb": min(max(self.phases.values(), default=process), process), "by_phase": dict(self.phases),
               "process_peak_rss_mb": process, "weights_mb": weights_mb(model), "budget_mb": int(budget_mb)}
        if self.device.startswith("cuda") and torch.cuda.is_available():
            out["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated(torch.device(self.device)) / 2**20)
        return out


def _sample(meter: weakref.ref, stop: threading.Event) -> None:
    while not stop.wait(INTERVAL_S):
        live = meter()
        if live is None:
            return
        live.observe()
        del live
