"""One GPU per job for `hydra/launcher=local_gpus`: each job process claims a free GPU by locking its slot file.

The launcher runs as many job processes at once as there are GPUs, so a free slot always exists; a slot is held
(an exclusive `flock`) for the job's lifetime and released when the job ends or its process dies. Without CUDA the
launcher falls back to one job at a time on the CPU (`circuitlab run -m` says so in one warning line); `device=cuda`
there is refused before any job runs.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("circuitlab")


def gpu_count() -> int:
    """Visible CUDA devices (at least 1, so that a launcher sized by it runs one job at a time without GPUs)."""
    import torch

    return max(1, torch.cuda.device_count())


@contextmanager
def claimed_gpu(sweep_dir: Path, enabled: bool = True) -> Iterator[str | None]:
    """`cuda:N` for the first GPU slot no other job holds, for the duration of the block (None when disabled
    or without CUDA)."""
    import torch

    if not enabled or not torch.cuda.is_available():
        yield None
        return
    slots = Path(sweep_dir) / ".gpu_slots"
    slots.mkdir(parents=True, exist_ok=True)
    for index in range(torch.cuda.device_count()):
        handle = open(slots / f"{index}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        try:
            log.info("job %d on cuda:%d", os.getpid(), index)
            yield f"cuda:{index}"
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    raise RuntimeError(f"every GPU slot under {slots} is taken: run at most {torch.cuda.device_count()} jobs at once")
