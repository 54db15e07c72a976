"""Input blocks decoded once and shared by every reading thread.

Tiles overlap, and a 256-px tile with its halo covers parts of up to four 512-px input blocks. GDAL caches decoded
blocks per dataset handle, and handles cannot be shared between threads, so with one handle per reading thread each
thread decodes the blocks it touches again: more readers decode more, and one reader is a serial stage. Here a
window is served from whole, block-aligned reads kept in one store. The runner announces each tile as its read is
queued (:meth:`BlockStore.expect`), and the store's own threads decode the announced blocks in that order, each once;
a read copies its window out, decoding itself any block nobody has started. Blocks are dropped oldest first once the
store holds more than its budget, which holds the block rows one row of tiles spans and the next
(:func:`tilecast.resources.block_store_bytes`), so each block is decoded once. A read decodes every block of its
window that no thread has started before it waits for blocks another thread is decoding at that moment, so reads
cannot wait on each other in a cycle.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from rasterio.windows import Window

__all__ = ["BlockStore", "block_windows"]

Decode = Callable[[Window, "np.ndarray | None"], tuple[np.ndarray, "np.ndarray | None"]]
"""Reads one block-aligned window, into the given array when there is one (a dropped block's, reused: a fresh one
costs the kernel a page fault and a zeroed page per 4 KiB): ``(bands, h, w)`` data and per-band masks (None when
all valid)."""


@dataclass(eq=False)
class _Block:
    done: threading.Event = field(default_factory=threading.Event)
    started: bool = False
    queued: bool = False
    users: int = 0
    """Reads that hold this block and have not copied from it yet: its array is reused only when none does."""
    data: np.ndarray | None = None
    masks: np.ndarray | None = None
    error: BaseException | None = None

    def result(self) -> tuple[np.ndarray, np.ndarray | None]:
        self.done.wait()
        if self.error is not None:
            raise self.error
        assert self.data is not None
        return self.data, self.masks


def block_windows(window: Window, block: tuple[int, int], shape: tuple[int, int]) -> Iterator[tuple[int, int]]:
    """``(block_row, block_col)`` of every block of ``block`` ``(h, w)`` pixels that ``window`` touches in a raster
    of ``shape``; row-major."""
    bh, bw = block
    r0, c0 = int(window.row_off), int(window.col_off)
    r1 = min(shape[0], r0 + int(window.height))
    c1 = min(shape[1], c0 + int(window.width))
    for br in range(max(0, r0) // bh, (r1 - 1) // bh + 1):
        for bc in range(max(0, c0) // bw, (c1 - 1) // bw + 1):
            yield br, bc


class BlockStore:
    """Serves windows of a raster of ``shape`` from its ``block``-sized blocks, each decoded once by ``decode``.

    ``budget``: the bytes of decoded blocks (data and masks) kept; a block dropped and needed again is decoded again.
    Windows must lie inside the raster (the runners pad beyond its edge themselves).
    """

    def __init__(self, shape: tuple[int, int], block: tuple[int, int], decode: Decode, budget: int,
                 threads: int = 0) -> None:
        self.shape, self.block, self.decode, self.budget = shape, block, decode, budget
        self._pool = ThreadPoolExecutor(threads, "tilecast-decode") if threads > 0 else None
        self._blocks: OrderedDict[tuple[int, int], _Block] = OrderedDict()
        self._lock = threading.Lock()
        self._bytes = 0
        self._spare: dict[tuple[int, ...], list[np.ndarray]] = {}
        self.decodes = 0
        """Blocks decoded so far (a block decoded twice counts twice)."""

    def _window(self, key: tuple[int, int]) -> Window:
        (br, bc), (bh, bw) = key, self.block
        return Window(bc * bw, br * bh, min(bw, self.shape[1] - bc * bw), min(bh, self.shape[0] - br * bh))

    def expect(self, window: Window) -> None:
        """Start decoding, on the store's own threads, the blocks of a window that will be read soon (the runner
        announces its tiles in plan order, ahead of their reads): the decoding threads work through the blocks in
        that order and never wait for one another, while reads only copy. Without threads, nothing happens."""
        if self._pool is None:
            return
        with self._lock:
            todo = []
            for key in block_windows(window, self.block, self.shape):
                b = self._blocks.get(key)
                if b is None:
                    b = self._blocks[key] = _Block()
                if not b.started and not b.queued:
                    b.queued = True
                    todo.append((key, b))
        for key, b in todo:
            self._pool.submit(self._claim, key, b)

    def _claim(self, key: tuple[int, int], b: _Block) -> None:
        with self._lock:
            if b.started:  # a read got there first
                return
            b.started = True
        with contextlib.suppress(BaseException):  # kept on the block: the read that needs it raises it
            self._fill(key, b)

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands, h, w)`` data of ``window`` and per-band masks (None when every pixel is valid)."""
        keys = list(block_windows(window, self.block, self.shape))
        with self._lock:
            blocks = []
            for key in keys:
                b = self._blocks.get(key)
                if b is None:
                    b = self._blocks[key] = _Block()
                else:
                    self._blocks.move_to_end(key)
                b.users += 1
                blocks.append(b)
        try:
            # Decode every block of the window that nobody has started, then wait for those others are decoding:
            # two threads that need the same two blocks decode one each.
            for key, b in zip(keys, blocks, strict=True):
                with self._lock:
                    if b.started:
                        continue
                    b.started = True
                self._fill(key, b)
            return self._copy(window, keys, blocks)
        finally:  # also when a block failed to decode: the others' arrays can be reused once dropped
            with self._lock:
                for b in blocks:
                    b.users -= 1

    def _copy(self, window: Window, keys: list[tuple[int, int]],
              blocks: list[_Block]) -> tuple[np.ndarray, np.ndarray | None]:
        r0, c0 = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        out: np.ndarray | None = None
        masks: np.ndarray | None = None
        for key, b in zip(keys, blocks, strict=True):
            data, block_masks = b.result()
            if out is None:  # the decoder's own dtype: the same values a read of the whole window gives
                out = np.empty((data.shape[0], h, w), data.dtype)
            bw = self._window(key)
            y0, x0 = max(r0, bw.row_off), max(c0, bw.col_off)
            y1, x1 = min(r0 + h, bw.row_off + bw.height), min(c0 + w, bw.col_off + bw.width)
            src = (slice(None), slice(y0 - bw.row_off, y1 - bw.row_off), slice(x0 - bw.col_off, x1 - bw.col_off))
            dst = (slice(None), slice(y0 - r0, y1 - r0), slice(x0 - c0, x1 - c0))
            out[dst] = data[src]
            if block_masks is not None:
                if masks is None:
                    masks = np.ones(out.shape, bool)
                masks[dst] = block_masks[src]
        assert out is not None, "a window inside the raster touches at least one block"
        return out, masks

    def _fill(self, key: tuple[int, int], b: _Block) -> None:
        window = self._window(key)
        with self._lock:
            spare = self._spare.get((int(window.height), int(window.width)))
            into = spare.pop() if spare else None
        try:
            data, masks = self.decode(window, into)
        except BaseException as exc:
            b.error = exc
            with self._lock:  # a later read tries again (and meets the same error, or not)
                if self._blocks.get(key) is b:
                    del self._blocks[key]
            b.done.set()
            raise
        b.data, b.masks = data, (None if masks is None or masks.all() else masks)
        size = data.nbytes + (b.masks.nbytes if b.masks is not None else 0)
        with self._lock:
            self.decodes += 1
            if self._blocks.get(key) is b:
                self._bytes += size
                self._evict()
        b.done.set()

    def _evict(self) -> None:
        """Drop the least recently used decoded blocks over the budget (never one still being decoded); a read
        that already holds a dropped block keeps its arrays until it has copied them."""
        for key in list(self._blocks):
            if self._bytes <= self.budget:
                return
            b = self._blocks[key]
            if not b.done.is_set() or b.data is None:
                continue
            del self._blocks[key]
            self._bytes -= b.data.nbytes + (b.masks.nbytes if b.masks is not None else 0)
            spare = self._spare.setdefault(b.data.shape[1:], [])
            if b.users == 0 and len(spare) < 4:  # nobody can reach it any more: decode the next block into it
                spare.append(b.data)
                b.data = None

    def close(self) -> None:
        """Stop the decoding threads (blocks queued and not started are dropped) and drop every block."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self.clear()

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._spare.clear()
            self._bytes = 0
