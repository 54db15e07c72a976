"""The view's block cache on disk, bounded: least recently used blocks go first, across sessions and predictions.

The cache root holds one folder per run fingerprint (24 hex digits), each with one ``N.npy`` per block. Every session
adds blocks, so without a bound the folder would grow with every model, input and parameter ever viewed. A block
read from disk is touched (its modification time is its last use), and whenever the root holds more than its
limit, the oldest blocks are deleted until it holds at most :data:`PRUNE_TO` of it. Only tilecast's own files are
ever deleted (block files in fingerprint folders, and temporary files a killed process left); anything else under
a ``cache_dir`` is left alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

__all__ = ["DEFAULT_DISK_BYTES", "PRUNE_TO", "DiskBudget", "cache_files"]

DEFAULT_DISK_BYTES = 4 * 2**30
"""The cache root's default limit (``--cache-size``, ``ViewOptions.cache_size``)."""
PRUNE_TO = 0.8
"""Pruning goes below the limit by this fraction of it, so that it does not run again at the next block."""
STALE_TMP_S = 3600.0
"""A temporary block file this old was left by a process that died while writing it."""

_FOLDER = re.compile(r"^[0-9a-f]{24}$")
_BLOCK = re.compile(r"^\d+\.npy$")
_TMP = re.compile(r"^\.\d+\..*\.npy$")


def cache_files(root: Path) -> list[tuple[float, int, Path]]:
    """``(last use, bytes, path)`` of every block file under ``root``, oldest first; temporary files left by a
    killed process count as the oldest."""
    out = []
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as folders:
        for folder in folders:
            if not (_FOLDER.match(folder.name) and folder.is_dir(follow_symlinks=False)):
                continue
            with contextlib.suppress(OSError), os.scandir(folder.path) as entries:
                for e in entries:
                    with contextlib.suppress(OSError):
                        if _BLOCK.match(e.name):
                            st = e.stat(follow_symlinks=False)
                            out.append((st.st_mtime, st.st_size, Path(e.path)))
                        elif _TMP.match(e.name):
                            st = e.stat(follow_symlinks=False)
                            if now - st.st_mtime > STALE_TMP_S:
                                out.append((0.0, st.st_size, Path(e.path)))
    out.sort(key=lambda f: f[0])
    return out


class DiskBudget:
    """The bytes under a cache root, kept at most ``max_bytes`` (None: unbounded) by deleting the least recently
    used blocks. Other processes may write to the same root: every pruning counts the files afresh."""

    def __init__(self, root: Path, max_bytes: int | None = DEFAULT_DISK_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.used = sum(size for _, size, _ in cache_files(root)) if max_bytes is not None else 0
        """Bytes under the root, as counted at the last pruning plus what this process wrote since."""
        self.pruned = 0
        """Block files deleted by this process."""
        self._lock = threading.Lock()  # blocks are written from several threads
        if max_bytes is not None and self.used > max_bytes:
            self.prune()

    def touch(self, path: Path) -> None:
        """Mark a block as just used (it is read from disk): pruning keeps it over blocks unused since."""
        with contextlib.suppress(OSError):
            os.utime(path)

    def added(self, nbytes: int) -> None:
        """Count a block just written, and prune if the root is over its limit."""
        if self.max_bytes is None:
            return
        with self._lock:
            self.used += nbytes
            if self.used > self.max_bytes:
                self._prune()

    def prune(self) -> None:
        """Delete the least recently used blocks until the root holds at most ``PRUNE_TO`` of the limit, then the
        fingerprint folders left empty."""
        with self._lock:
            self._prune()

    def _prune(self) -> None:
        if self.max_bytes is None:
            return
        files = cache_files(self.root)
        used = sum(size for _, size, _ in files)
        target = int(self.max_bytes * PRUNE_TO)
        emptied = set()
        for _, size, path in files:
            if used <= target:
                break
            with contextlib.suppress(FileNotFoundError):  # another viewer pruned it first
                path.unlink()
                self.pruned += 1
            used -= size
            emptied.add(path.parent)
        for folder in emptied:
            with contextlib.suppress(OSError):  # not empty: another block is still there
                folder.rmdir()
        self.used = used
