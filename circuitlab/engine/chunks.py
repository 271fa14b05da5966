"""Finished chunks of a sweep, persisted the moment they complete, so that a rerun into the same run dir
(resume) or a merge of shard dirs loads them instead of computing them again.

Values are stored per sweep point under a key that names the point and the call it belongs to (method,
direction, metrics, scope such as an ablation scale); a chunk planned in a later run is skipped when every one
of its points is stored, whichever run or shard stored it. One file per computed chunk in `<run dir>/chunks/`,
written atomically (a killed process leaves no partial file), holding the sha256 of its keys and values. A chunk
file that does not load, is not a chunk, or fails its digest (truncated, emptied, overwritten) is named in one
warning, removed, and its points computed again; the other chunks resume.

Sharding (`sweep.shard=i sweep.num_shards=n`) hands out whole chunks of the unsharded plan: shard i computes the
chunks numbered i, i + n, ... in plan order, so each point is computed in the very batch the unsharded run would
use, and merged shards equal the unsharded run bit for bit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch import Tensor

from circuitlab.storage import load_tensors, write_tensors

log = logging.getLogger("circuitlab")

# testing hook: SIGKILL this process right after it has stored this many chunks (a crash at a known point)
KILL_AFTER_ENV = "CIRCUITLAB_KILL_AFTER_CHUNKS"
# testing hook: after this many stored chunks, wait (holding the run dir) until the file named by WAIT_FOR_ENV exists
WAIT_AFTER_ENV, WAIT_FOR_ENV = "CIRCUITLAB_WAIT_AFTER_CHUNKS", "CIRCUITLAB_WAIT_FOR"


class ChunkStore:
    """Per-point metric values of finished chunks, on disk under `directory` (None: in memory only)."""

    def __init__(self, directory: Path | None, shard: int = 0, num_shards: int = 1):
        self.directory = None if directory is None else Path(directory)
        self.shard, self.num_shards = shard, num_shards
        self.values: dict[str, dict[str, float]] = {}
        self.loaded_files = self.computed = self.skipped = self.other_shards = self.planned = self.damaged = 0
        if self.directory is not None and self.directory.is_dir():
            for path in sorted(self.directory.glob("*.pt")):
                chunk = read_chunk(path)
                if chunk is None:
                    self.damaged += 1
                    path.unlink(missing_ok=True)
                    continue
                self._remember(chunk)
                self.loaded_files += 1

    def _remember(self, chunk: dict) -> None:
        for i, key in enumerate(chunk["keys"]):
            self.values[key] = {name: float(values[i]) for name, values in chunk["metrics"].items()}

    def lookup(self, keys: list[str]) -> dict[str, Tensor] | None:
        """The stored metrics of every point, or None when any point is missing."""
        if not all(key in self.values for key in keys):
            return None
        names = self.values[keys[0]].keys()
        return {name: torch.tensor([self.values[key][name] for key in keys]) for name in names}

    def save(self, keys: list[str], metrics: dict[str, Tensor]) -> None:
        chunk = {"keys": list(keys), "metrics": {name: values.detach().float().cpu().contiguous() for name, values in metrics.items()}}
        chunk["sha256"] = chunk_digest(chunk["keys"], chunk["metrics"])
        if self.directory is not None:
            write_tensors(self.directory / chunk_file_name(keys), chunk)
        self._remember(chunk)
        self.computed += 1
        kill_after = os.environ.get(KILL_AFTER_ENV)
        if kill_after and self.computed >= int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        wait_after = os.environ.get(WAIT_AFTER_ENV)
        if wait_after and self.computed == int(wait_after):
            import time

            while not Path(os.environ.get(WAIT_FOR_ENV, "")).exists():
                time.sleep(0.05)

    def owns_next(self) -> bool:
        """Whether the next chunk of the plan is this shard's."""
        number, self.planned = self.planned, self.planned + 1
        return number % self.num_shards == self.shard

    def summary(self) -> dict[str, int]:
        return {"chunk_files_found": self.loaded_files, "chunks_loaded": self.skipped, "chunks_computed": self.computed,
                "chunks_left_to_other_shards": self.other_shards, "damaged_chunk_files": self.damaged}

    def kept(self) -> int:
        """Chunk files now on disk (finished chunks a rerun will load), and training states (`*.state`: a method's
        state after its last finished epoch, e.g. edge pruning's masks)."""
        if self.directory is None or not self.directory.is_dir():
            return 0
        return len(list(self.directory.glob("*.pt"))) + len(list(self.directory.glob("*.state")))


def chunk_file_name(keys: list[str]) -> str:
    return hashlib.sha1("\n".join(keys).encode()).hexdigest()[:20] + ".pt"


def chunk_digest(keys: list[str], metrics: dict[str, Tensor]) -> str:
    """sha256 of a chunk's keys and float32 values, in a fixed order."""
    digest = hashlib.sha256("\n".join(keys).encode())
    for name in sorted(metrics):
        digest.update(b"\0" + name.encode() + b"\0")
        digest.update(metrics[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def chunk_problem(path: Path) -> tuple[dict | None, str | None]:
    """(the chunk, None) when `path` holds a whole chunk, else (None, what is wrong with it)."""
    try:
        chunk = load_tensors(path)
    except Exception as err:  # noqa: BLE001  torch raises many kinds for truncated, empty or foreign files
        text = str(err).strip().splitlines()
        return None, f"it does not load: {text[0][:120] if text else type(err).__name__}"
    if not isinstance(chunk, dict) or not isinstance(chunk.get("keys"), list) or not isinstance(chunk.get("metrics"), dict):
        return None, "it is not a chunk of sweep points"
    keys, metrics = chunk["keys"], chunk["metrics"]
    if not keys or not all(isinstance(k, str) for k in keys):
        return None, "it is not a chunk of sweep points"
    for values in metrics.values():
        if not isinstance(values, Tensor) or values.ndim != 1 or values.shape[0] != len(keys):
            return None, "its values do not match its keys"
    stored = chunk.get("sha256")
    if stored is not None and stored != chunk_digest(keys, metrics):  # chunks written before digests have none
        return None, "its sha256 does not match its contents"
    return chunk, None


def read_chunk(path: Path, what: str = "its sweep points are computed again") -> dict | None:
    """The chunk in `path`, or None after one warning naming the file when it is damaged."""
    chunk, problem = chunk_problem(path)
    if problem:
        log.warning("damaged chunk file %s (%s); %s", path, problem, what)
    return chunk


_STORE: ContextVar[ChunkStore | None] = ContextVar("circuitlab_chunk_store", default=None)
_SCOPE: ContextVar[tuple[str, ...]] = ContextVar("circuitlab_chunk_scope", default=())


def current_store() -> ChunkStore | None:
    """The store of the run now going (None outside a run): a method that trains keeps its epoch states in its
    directory (`<run dir>/chunks/NAME.state`), which run.resume=false clears with the chunks."""
    return _STORE.get()


@contextmanager
def active(store: ChunkStore) -> Iterator[ChunkStore]:
    """Make `store` the one sweeps persist to while the block runs."""
    token = _STORE.set(store)
    try:
        yield store
    finally:
        _STORE.reset(token)


@contextmanager
def scope(name: str) -> Iterator[None]:
    """Tag the keys of sweeps run inside the block (e.g. one ablation scale)."""
    token = _SCOPE.set((*_SCOPE.get(), name))
    try:
        yield
    finally:
        _SCOPE.reset(token)


def point_keys(call: str, points: list) -> list[str]:
    """Keys for `points` (their reprs) of one sweep call, in the current scope."""
    prefix = "|".join((*_SCOPE.get(), call))
    return [f"{prefix}|{point!r}" for point in points]


def compute_or_load(keys: list[str], compute: Callable[[], dict[str, Tensor]]) -> dict[str, Tensor] | None:
    """The chunk's metrics: loaded when every point is stored, else computed and stored; None when the chunk
    belongs to another shard."""
    store = _STORE.get()
    if store is None:
        return compute()
    owned = store.owns_next()
    found = store.lookup(keys)
    if found is not None:
        store.skipped += 1
        return found
    if not owned:
        store.other_shards += 1
        return None
    metrics = compute()
    store.save(keys, metrics)
    return metrics
