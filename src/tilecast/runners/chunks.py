"""Output chunks made of whole tiles: the unit of work for distributed and resumable runs.

A chunk is a rectangle of ``rows x cols`` tiles of the plan. Computing a chunk reads its tiles' input windows (with
halo) straight from the source, runs the model in batches and assembles the chunk's output window.

Bit-identity with the streaming runner: the :class:`~tilecast.assemble.Assembler` adds tiles row-major into float32
accumulators. :class:`ChunkAssembler` adds, for every pixel of its window, exactly the tiles that touch that pixel,
in the same row-major order and with the same weights, so each float32 sum is performed in the same order and the
result is the same to the bit. With blending, tiles just outside the chunk whose padded outputs reach into it are
computed again by the neighbouring chunk (a ring of tiles); with ``crop`` nothing is computed twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import threading
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np
from rasterio.windows import Window

from ..assemble import Block, blend_weights
from ..job import Job, TileData
from ..plan import Tile, TilePlan
from ..resources import Resources
from ..runtimes.base import model_path, streams_of
from ..runtimes.callable import CallableRuntime
from ..sources.base import source_paths
from .ordered import BatchReuse, batches, in_order

__all__ = ["ChunkAssembler", "ChunkLayout", "ChunkStats", "chunk_shape", "compute_chunk", "fingerprint"]

DEFAULT_CHUNK_PIXELS = 2048
"""Default output chunk edge, in output pixels (rounded to whole tiles)."""


@dataclass(frozen=True)
class ChunkLayout:
    """Output chunks of ``rows x cols`` whole tiles over a plan; chunk ``index`` runs row-major."""

    plan: TilePlan
    rows: int
    cols: int
    blend: bool

    @classmethod
    def create(cls, plan: TilePlan, blend: bool, chunk_size: int | tuple[int, int] | None = None) -> ChunkLayout:
        """``chunk_size``: target output pixels per chunk edge, ``(x, y)``; rounded up to whole tiles."""
        cx, cy = (chunk_size, chunk_size) if isinstance(chunk_size, int) or chunk_size is None else chunk_size
        cx, cy = cx or DEFAULT_CHUNK_PIXELS, cy or DEFAULT_CHUNK_PIXELS
        out = plan.geometry.out
        rows = max(1, min(plan.tile_rows, math.ceil(cy / out.y)))
        cols = max(1, min(plan.tile_cols, math.ceil(cx / out.x)))
        return cls(plan, rows, cols, blend)

    @property
    def chunk_rows(self) -> int:
        return math.ceil(self.plan.tile_rows / self.rows)

    @property
    def chunk_cols(self) -> int:
        return math.ceil(self.plan.tile_cols / self.cols)

    def __len__(self) -> int:
        return self.chunk_rows * self.chunk_cols

    def position(self, index: int) -> tuple[int, int]:
        return divmod(index, self.chunk_cols)

    def window(self, index: int) -> Window:
        """The chunk's output window: the union of its tiles' output windows."""
        i, j = self.position(index)
        out = self.plan.geometry.out
        h, w = self.plan.output_shape
        r0, c0 = i * self.rows * out.y, j * self.cols * out.x
        return Window(c0, r0, min(w, c0 + self.cols * out.x) - c0, min(h, r0 + self.rows * out.y) - r0)

    def own_tiles(self, index: int) -> int:
        """Tiles whose core lies in the chunk (what progress counts)."""
        i, j = self.position(index)
        p = self.plan
        return (min(p.tile_rows, (i + 1) * self.rows) - i * self.rows) * (
            min(p.tile_cols, (j + 1) * self.cols) - j * self.cols
        )

    def margin(self) -> tuple[int, int]:
        """Tiles beyond the chunk whose padded outputs reach into it, ``(rows, cols)``."""
        oo = self.plan.geometry.output_overlap if self.blend else None
        if not oo:
            return 0, 0
        out = self.plan.geometry.out
        return math.ceil(oo.y / out.y), math.ceil(oo.x / out.x)

    def tiles(self, index: int) -> list[Tile]:
        """Every tile that writes into the chunk, row-major (the order the streaming assembler adds them)."""
        i, j = self.position(index)
        p = self.plan
        mr, mc = self.margin()
        r0, r1 = max(0, i * self.rows - mr), min(p.tile_rows, (i + 1) * self.rows + mr)
        c0, c1 = max(0, j * self.cols - mc), min(p.tile_cols, (j + 1) * self.cols + mc)
        win = self.window(index)
        tiles = []
        for r in range(r0, r1):
            for c in range(c0, c1):
                t = p.tile(r, c)
                if _intersect(t.blend_out if self.blend else t.out, win) is not None:
                    tiles.append(t)
        return tiles

    def chunks_shape(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dask-style chunk sizes along ``(y, x)``."""
        ys = tuple(int(self.window(i * self.chunk_cols).height) for i in range(self.chunk_rows))
        xs = tuple(int(self.window(j).width) for j in range(self.chunk_cols))
        return ys, xs


def _intersect(a: Window, b: Window) -> tuple[int, int, int, int] | None:
    """``(row0, row1, col0, col1)`` of the overlap of two windows, or None."""
    r0, r1 = max(a.row_off, b.row_off), min(a.row_off + a.height, b.row_off + b.height)
    c0, c1 = max(a.col_off, b.col_off), min(a.col_off + a.width, b.col_off + b.width)
    if r1 <= r0 or c1 <= c0:
        return None
    return int(r0), int(r1), int(c0), int(c1)


class ChunkAssembler:
    """The :class:`~tilecast.assemble.Assembler` restricted to one output window (same arithmetic, same order)."""

    def __init__(self, job: Job, window: Window) -> None:
        self.win = window
        n_in = len(job.source.band_names) if job.append_input else 0
        n_out = len(job.outputs.band_names)
        self.blend = job.spec.blend
        if job.blending:
            self.n_placed, blended = n_in, n_out
        else:
            self.n_placed, blended = n_in + n_out, 0
        oo = job.plan.geometry.output_overlap if job.blending else None
        self.oo = (oo.y, oo.x) if oo else (0, 0)
        self.dtype = job.profile.dtype
        h, w = int(window.height), int(window.width)
        self.placed: np.ndarray | None = None
        self.acc = np.zeros((blended, h, w), dtype=np.float32)
        self.wsum = np.zeros((h, w), dtype=np.float32) if blended else None
        self.valid = np.ones((h, w), dtype=bool)
        self.any_invalid = False

    def _local(self, win: Window) -> tuple[slice, slice, slice, slice] | None:
        """Slices into this chunk's buffers and into an array laid out on ``win``."""
        box = _intersect(win, self.win)
        if box is None:
            return None
        r0, r1, c0, c1 = box
        wr, wc = int(self.win.row_off), int(self.win.col_off)
        tr, tc = int(win.row_off), int(win.col_off)
        return slice(r0 - wr, r1 - wr), slice(c0 - wc, c1 - wc), slice(r0 - tr, r1 - tr), slice(c0 - tc, c1 - tc)

    def add(self, tile: Tile, placed: np.ndarray | None, blended: np.ndarray | None, valid: np.ndarray | None) -> None:
        core = self._local(tile.out)
        if core is not None:
            br, bc, tr, tc = core
            if placed is not None:
                if self.placed is None:
                    self._allocate(placed.dtype)
                self.placed[:, br, bc] = placed[:, tr, tc]
            if valid is not None:
                self.valid[br, bc] = valid[tr, tc]
                self.any_invalid = True
        if blended is None:
            return
        b = tile.blend_out
        loc = self._local(b)
        if loc is None:
            return
        br, bc, tr, tc = loc
        oy, ox = tile.blend_offset
        sr, sc = slice(tr.start + oy, tr.stop + oy), slice(tc.start + ox, tc.stop + ox)
        weights = blend_weights(blended.shape[1:], self.oo, self.blend, tile.edges)[sr, sc]
        self.acc[:, br, bc] += blended[:, sr, sc] * weights
        self.wsum[br, bc] += weights

    def skip(self, tile: Tile) -> None:
        core = self._local(tile.out)
        if core is not None:
            self.valid[core[0], core[1]] = False
            self.any_invalid = True

    def _allocate(self, dtype: np.dtype) -> None:
        self.placed = np.zeros((self.n_placed, *self.valid.shape), dtype=dtype)

    def block(self) -> Block:
        parts = []
        if self.n_placed:
            if self.placed is None:
                self._allocate(self.dtype)
            parts.append(self.placed)
        if self.acc.shape[0]:
            with np.errstate(invalid="ignore", divide="ignore"):
                parts.append(self.acc / self.wsum[None])
        if len(parts) == 1:
            data = parts[0]
        else:
            dtype = np.result_type(*parts)
            data = np.concatenate([p.astype(dtype, copy=False) for p in parts])
        return Block(self.win, data, self.valid if self.any_invalid else None)


@dataclass
class ChunkStats:
    """What a chunk task reports back (small: no pixels)."""

    index: int
    tiles: int
    """Tiles whose core is in the chunk."""
    computed: int
    """Tiles read and run (includes the blending ring and skipped tiles)."""
    model_calls: int
    input_bytes: int
    output_bytes: int
    seconds: float


def compute_chunk(
    job: Job,
    layout: ChunkLayout,
    index: int,
    pool: Executor | None = None,
    infer_slots: threading.Semaphore | None = None,
    models: Executor | None = None,
    reuse: BatchReuse | None = None,
    resources: Resources | None = None,
) -> tuple[Window, np.ndarray, ChunkStats]:
    """Read, infer (in batches of ``batch_size``) and assemble one chunk; returns its window and cast pixels.

    ``pool`` reads ahead; ``models`` keeps the runtime's ``streams`` calls going while the next batch is read
    (else each batch runs inline); ``infer_slots`` bounds the calls a process's concurrent tasks make at once.
    ``reuse``: the job's packed batches to stack into again (keep one per job across chunks; a fresh one by
    default); ``resources``: the policy (by default :meth:`Resources.detect()
    <tilecast.resources.Resources.detect>`).
    """
    import time

    start = time.perf_counter()
    res = resources or Resources.detect()
    reuse = reuse or BatchReuse(job, res)
    window = layout.window(index)
    tiles = layout.tiles(index)
    asm = ChunkAssembler(job, window)
    calls = 0
    in_bytes = 0

    def infer(pending: list[TileData]) -> list[np.ndarray]:
        work = [p for p in pending if not p.skip]
        if not work:
            return []
        with infer_slots if infer_slots is not None else contextlib.nullcontext():
            return reuse.infer(work)

    read = (item for _, item in in_order(pool, tiles, job.read, max(2 * job.inputs.batch_size, 4)))
    ahead = streams_of(job.runtime) * job.inputs.batch_size  # in tiles, as the local runner
    for pending, values in in_order(models, batches(job, read, len(tiles), res), infer, ahead, weight=_work):
        calls += bool(values)
        results = iter(values)
        for item in pending:
            in_bytes += item.data.nbytes
            job.add(asm, item, None if item.skip else next(results))
    data = job.finish(asm.block())
    stats = ChunkStats(index, layout.own_tiles(index), len(tiles), calls, in_bytes, data.nbytes,
                       time.perf_counter() - start)
    return window, data, stats


def _work(pending: list[TileData]) -> int:
    return sum(not p.skip for p in pending)


def chunk_shape(layout: ChunkLayout) -> tuple[int, int]:
    """Output pixels ``(rows, cols)`` of a full chunk; storage chunks (Zarr) use it."""
    out = layout.plan.geometry.out
    h, w = layout.plan.output_shape
    return min(h, layout.rows * out.y), min(w, layout.cols * out.x)


def _identity(obj: object, paths: list[str]) -> object:
    """A stable description of a model or source: its files' paths, sizes and modification times, else its type
    (and a callable runtime's function)."""
    if not paths:
        fn = obj.fn if isinstance(obj, CallableRuntime) else None
        name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        return f"{type(obj).__name__}:{getattr(fn, '__module__', '')}.{name}"
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except (OSError, TypeError):
            out.append([str(p)])
    return out


def fingerprint(job: Job, layout: ChunkLayout) -> str:
    """Identifies a run, so that ``resume`` only adopts chunks computed with the same model, input and layout."""
    p = job.profile
    g = p.grid
    parts = {
        "grid": [g.crs.to_wkt() if g.crs else None, list(g.transform)[:6], list(g.shape)],
        "bands": list(p.band_names), "dtype": str(p.dtype), "nodata": repr(p.nodata),
        "plan": [list(job.plan.shape), repr(job.plan.geometry), repr(job.plan.region)],
        "layout": [layout.rows, layout.cols, layout.blend],
        "spec": repr(job.spec), "append": job.append_input,
        "model": _identity(job.runtime, [p for p in [model_path(job.runtime)] if p]),
        "source": _identity(job.source, source_paths(job.source)),
        "bands_in": list(job.source.band_names),
    }
    if job.mask_receptive_field:  # only when set, so that earlier runs' fingerprints stay the same
        parts["mask_receptive_field"] = True
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()
