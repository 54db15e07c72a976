"""Predictions on demand, block by block, on the prediction's own tile plan.

A map never drives inference in web-mercator pixels. Its blocks are the output chunks of whole tiles that resumable
and Dask runs use (:mod:`tilecast.runners.chunks`): the same plan, overlap and blending, assembled in the same
order, so a block's pixels are bit-identical to the batch prediction's. Each block is computed once: concurrent
requests for it share one future; finished blocks go to a bounded in-memory LRU cache and to an on-disk cache keyed
by the run's fingerprint (model, parameters, input, layout), so a restarted viewer reuses them; the disk cache is
bounded too (:mod:`tilecast.view.diskcache`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rasterio.windows import Window

from ..runners.chunks import ChunkLayout, compute_chunk, fingerprint
from ..runtimes.base import streams_of
from ..runtimes.callable import CallableRuntime
from .diskcache import DEFAULT_DISK_BYTES, DiskBudget

if TYPE_CHECKING:
    from ..prediction import Prediction

__all__ = ["BlockRunner", "BlockStore", "ViewStats", "default_cache_dir"]

DEFAULT_BLOCK_PIXELS = 512
"""Target block edge in output pixels (rounded up to whole tiles): a few map tiles' worth at native zoom."""

DEFAULT_MEMORY_BYTES = 256 * 2**20


def default_cache_dir() -> Path:
    """``$TILECAST_CACHE_DIR`` or ``$XDG_CACHE_HOME/tilecast/view`` (``~/.cache/tilecast/view``)."""
    env = os.environ.get("TILECAST_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tilecast" / "view"


@dataclass
class ViewStats:
    """Counters the tests and the benchmark read."""

    computed: int = 0
    """Blocks computed (model run)."""
    model_calls: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    shared: int = 0
    """Requests that joined a block already being computed."""
    dropped: int = 0
    """Queued blocks dropped before they started because every request for them went away."""


class BlockStore:
    """Finished blocks: a bounded LRU in memory over an optional directory of ``.npy`` files (one per block).

    ``disk_bytes`` bounds the cache root (``directory``'s parent, shared by every fingerprint): beyond it the least
    recently used blocks on disk are deleted; None leaves it unbounded."""

    def __init__(self, directory: Path | None, max_bytes: int = DEFAULT_MEMORY_BYTES,
                 disk_bytes: int | None = DEFAULT_DISK_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._memory: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.disk: DiskBudget | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self.disk = DiskBudget(directory.parent, disk_bytes)

    def _path(self, index: int) -> Path | None:
        return None if self.directory is None else self.directory / f"{index}.npy"

    def memory(self, index: int) -> np.ndarray | None:
        with self._lock:
            data = self._memory.get(index)
            if data is not None:
                self._memory.move_to_end(index)
            return data

    def on_disk(self, index: int) -> bool:
        path = self._path(index)
        return path is not None and path.exists()

    def load(self, index: int) -> np.ndarray | None:
        """The block from disk (then kept in memory), or None."""
        path = self._path(index)
        if path is None:
            return None
        try:
            data = np.load(path, allow_pickle=False)
        except (OSError, ValueError):  # missing, or a torn file from a killed process: compute it again
            return None
        self._used(path)
        self._remember(index, data)
        return data

    def _used(self, path: Path) -> None:
        if self.disk is not None:
            self.disk.touch(path)

    def known(self) -> set[int]:
        """Indexes of every finished block, in memory or on disk."""
        with self._lock:
            found = set(self._memory)
        if self.directory is not None:
            found.update(int(p.stem) for p in self.directory.glob("*.npy") if p.stem.isdigit())
        return found

    def peek(self, index: int) -> np.ndarray | None:
        """The block from memory, or mapped from disk without filling the memory cache (for decimated reads)."""
        data = self.memory(index)
        path = self._path(index)
        if data is not None or path is None:
            return data
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return None
        self._used(path)
        return data

    def put(self, index: int, data: np.ndarray) -> None:
        self._remember(index, data)
        path = self._path(index)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)  # pruning removes a folder it emptied
        fd, tmp = tempfile.mkstemp(prefix=f".{index}.", suffix=".npy", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, data, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if self.disk is not None:
            self.disk.added(path.stat().st_size)

    def _remember(self, index: int, data: np.ndarray) -> None:
        with self._lock:
            old = self._memory.pop(index, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._memory[index] = data
            self._bytes += data.nbytes
            while self._bytes > self.max_bytes and len(self._memory) > 1:
                _, evicted = self._memory.popitem(last=False)
                self._bytes -= evicted.nbytes


class BlockRunner:
    """Computes a prediction's blocks on request, each once, and caches them.

    ``cache_dir``: where blocks are kept across restarts (a sub-folder per fingerprint); None for the default
    (:func:`default_cache_dir`), False for memory only. A model that is a Python function has no file to identify
    it by, so its blocks stay in memory unless ``cache_dir`` is given. ``disk_bytes``: the most the cache folder
    may hold, every fingerprint together (least recently used blocks are deleted beyond it); None: unbounded.
    """

    def __init__(
        self,
        prediction: Prediction,
        *,
        block_size: int | tuple[int, int] | None = None,
        cache_dir: str | os.PathLike | bool | None = None,
        memory_bytes: int = DEFAULT_MEMORY_BYTES,
        workers: int = 1,
        disk_bytes: int | None = DEFAULT_DISK_BYTES,
    ) -> None:
        self.prediction = prediction
        self.job = prediction.job
        self.profile = self.job.profile
        self.layout = ChunkLayout.create(self.job.plan, self.job.blending, block_size or DEFAULT_BLOCK_PIXELS)
        self.key = fingerprint(self.job, self.layout)
        self.stats = ViewStats()
        self.store = BlockStore(self._directory(cache_dir), memory_bytes, disk_bytes)
        self._futures: dict[int, Future[np.ndarray]] = {}
        self._waiters: dict[int, int] = {}
        self._lock = threading.Lock()
        streams = streams_of(self.job.runtime)
        self._blocks = ThreadPoolExecutor(workers, thread_name_prefix="tilecast-view-block")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="tilecast-view-read")
        self._models = ThreadPoolExecutor(streams, thread_name_prefix="tilecast-view-model") if streams > 1 else None
        self._slots = threading.Semaphore(streams)

    def _directory(self, cache_dir: str | os.PathLike | bool | None) -> Path | None:
        if cache_dir is False:
            return None
        if cache_dir is None or cache_dir is True:
            if isinstance(self.job.runtime, CallableRuntime):
                return None
            cache_dir = default_cache_dir()
        return Path(cache_dir) / hashlib.sha256(self.key.encode()).hexdigest()[:24]

    @property
    def block_shape(self) -> tuple[int, int]:
        """Output pixels ``(rows, cols)`` of a full block."""
        out = self.layout.plan.geometry.out
        return self.layout.rows * out.y, self.layout.cols * out.x

    def __len__(self) -> int:
        return len(self.layout)

    def window(self, index: int) -> Window:
        return self.layout.window(index)

    def blocks_for(self, window: Window) -> list[int]:
        """Indexes of the blocks that intersect ``window`` (output pixels), row-major."""
        bh, bw = self.block_shape
        h, w = self.layout.plan.output_shape
        r0, c0 = max(0, int(window.row_off)), max(0, int(window.col_off))
        r1 = min(h, int(np.ceil(window.row_off + window.height)))
        c1 = min(w, int(np.ceil(window.col_off + window.width)))
        if r1 <= r0 or c1 <= c0:
            return []
        cols = self.layout.chunk_cols
        return [i * cols + j for i in range(r0 // bh, (r1 - 1) // bh + 1) for j in range(c0 // bw, (c1 - 1) // bw + 1)]

    def cached(self, index: int) -> np.ndarray | None:
        """The block if it is already computed (memory or disk); never runs the model."""
        data = self.store.memory(index)
        if data is not None:
            self.stats.memory_hits += 1
            return data
        data = self.store.load(index)
        if data is not None:
            self.stats.disk_hits += 1
        return data

    def is_ready(self, index: int) -> bool:
        """Whether the block is computed or being computed (asking for it starts no new work)."""
        with self._lock:
            if index in self._futures:
                return True
        return self.store.memory(index) is not None or self.store.on_disk(index)

    def submit(self, index: int, waiting: bool = False) -> Future[np.ndarray]:
        """A future of the block's pixels: done at once when cached; shared while it is being computed.

        ``waiting``: count the caller as waiting for the block until it calls :meth:`release`, so that a block
        still queued when its last waiter gives up is dropped instead of computed for no one."""
        data = self.cached(index)
        if data is not None:
            done: Future[np.ndarray] = Future()
            done.set_result(data)
            return done
        with self._lock:
            future = self._futures.get(index)
            if future is not None:
                self.stats.shared += 1
            else:
                future = self._blocks.submit(self._compute, index)
                self._futures[index] = future
            if waiting:
                self._waiters[index] = self._waiters.get(index, 0) + 1
        return future

    def release(self, index: int, abandon: bool = False) -> None:
        """The end of a :meth:`submit` with ``waiting``; ``abandon``: the caller no longer wants the block, so it
        is dropped if it has not started and no one else waits for it."""
        with self._lock:
            left = self._waiters.get(index, 0) - 1
            if left > 0:
                self._waiters[index] = left
                return
            self._waiters.pop(index, None)
            future = self._futures.get(index)
            if abandon and future is not None and future.cancel():
                del self._futures[index]
                self.stats.dropped += 1

    def block(self, index: int) -> np.ndarray:
        """The block's pixels ``(bands, rows, cols)`` in the output dtype, computing them if needed."""
        return self.submit(index).result()

    def _compute(self, index: int) -> np.ndarray:
        try:
            data = self.cached(index)  # a twin viewer on the same cache may have written it meanwhile
            if data is None:
                _, data, chunk = compute_chunk(self.job, self.layout, index, self._reads, self._slots, self._models)
                data = np.ascontiguousarray(data)
                self.store.put(index, data)
                self.stats.computed += 1
                self.stats.model_calls += chunk.model_calls
            return data
        finally:
            with self._lock:
                self._futures.pop(index, None)

    def busy(self) -> bool:
        """Whether a block is being computed."""
        with self._lock:
            return any(f.running() for f in self._futures.values())

    def close(self, wait: bool = True) -> None:
        """Stop computing: queued blocks are dropped; running ones finish, waited for unless ``wait`` is False."""
        self._blocks.shutdown(wait=wait, cancel_futures=True)
        self._reads.shutdown(wait=wait)
        if self._models is not None:
            self._models.shutdown(wait=wait)
