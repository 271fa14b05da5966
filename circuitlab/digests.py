"""sha256 of input files, streamed and remembered within the process by (path, inode, size, mtime, ctime), so that big
weights are read once per process. A file of the Hugging Face cache that links to a blob named by its sha256 (how
the hub stores LFS files: weights) is not read at all: the blob's name is its digest."""

from __future__ import annotations

import hashlib
from pathlib import Path

from circuitlab.errors import CircuitlabError

_DIGESTS: dict[tuple, str] = {}
BLOCK = 1 << 20


def sha256(path: Path) -> str:
    """The sha256 of a file's bytes (cached per process by path, size and modification times)."""
    path = Path(path)
    if path.is_symlink():
        target = path.resolve()
        if target.parent.name == "blobs" and len(target.name) == 64 and all(c in "0123456789abcdef" for c in target.name):
            return target.name  # a Hugging Face cache blob of an LFS file: content-addressed by its sha256
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        if key not in _DIGESTS:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while block := handle.read(BLOCK):
                    digest.update(block)
            _DIGESTS[key] = digest.hexdigest()
    except OSError as err:
        raise CircuitlabError(f"{path}: cannot be read ({err.strerror or err})") from None
    return _DIGESTS[key]
