"""Reassembling tile outputs into finished output strips, out of core.

Tiles arrive row-major. The assembler holds only the rows that later tiles can still touch (one tile row plus the
overlap), and emits strips as soon as they are final. Strips are full width, or, for outputs too wide for the
resource policy's assembly budget, the width of one column band (:func:`column_bands`): the runner then sends each
band's tiles top to bottom before the next band's, so memory is flat in both width and height. ``crop`` places
each tile's core (Earth Engine); ``cosine`` and ``hann`` accumulate weighted padded outputs and divide by the summed
weights, which removes seams.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from rasterio.windows import Window

from .parallel import SERIAL, Spans
from .plan import Tile, TilePlan

__all__ = ["Assembler", "Block", "blend_weights", "column_bands"]


@dataclass(frozen=True)
class Block:
    """A finished part of the output: ``data`` is ``(bands, h, w)`` in float or the band dtypes (not yet cast)."""

    window: Window
    data: np.ndarray
    valid: np.ndarray | None


@lru_cache(maxsize=64)
def _ramp(n: int, overlap: int, kind: str, flat_start: bool, flat_end: bool) -> np.ndarray:
    w = np.ones(n, dtype=np.float64)
    if kind == "hann":
        x = (np.arange(n) + 0.5) / n
        w = np.sin(np.pi * x) ** 2
        half = n // 2
        if flat_start:
            w[:half] = 1.0
        if flat_end:
            w[n - half :] = 1.0
        return w
    ramp = np.sin(0.5 * np.pi * (np.arange(2 * overlap) + 0.5) / (2 * overlap)) ** 2
    if not flat_start:
        w[: 2 * overlap] = ramp
    if not flat_end:
        w[n - 2 * overlap :] = ramp[::-1]
    return w


def blend_weights(
    shape: tuple[int, int], overlap: tuple[int, int], kind: str, edges: tuple[bool, bool, bool, bool]
) -> np.ndarray:
    """2-D weights for a padded output tile of ``shape`` ``(h, w)`` with per-edge ``overlap`` ``(y, x)``.

    ``cosine`` ramps over the overlap so that neighbours' weights sum to one; ``hann`` spans the whole tile.
    Sides on the region's edge have no neighbour and keep full weight.
    """
    top, bottom, left, right = edges
    wy = _ramp(shape[0], overlap[0], kind, top, bottom)
    wx = _ramp(shape[1], overlap[1], kind, left, right)
    return np.outer(wy, wx).astype(np.float32)


class Assembler:
    """Collects tiles of one plan and yields finished full-width blocks in row order.

    ``blended`` bands are accumulated with weights; ``placed`` bands (crop mode, and input bands appended to the
    output) are copied from each tile's core.
    """

    def __init__(self, plan: TilePlan, placed: int, blended: int, dtype: np.dtype, blend: str, align: int = 1,
                 cols: tuple[int, int] | None = None):
        self.plan = plan
        self.blend = blend
        self.align = max(1, align)
        g = plan.geometry
        oo = g.output_overlap if blend != "crop" else None
        self.oo = (oo.y, oo.x) if oo else (0, 0)
        self.height, full_width = plan.output_shape
        self.c0, self.c1 = cols or (0, full_width)
        """The output columns assembled here: every column, or one band."""
        self.width = self.c1 - self.c0
        cap = g.out.y + 2 * self.oo[0] + self.align + 1
        self.base = 0  # output row of buffer row 0
        self.n_placed = placed
        self.dtype = dtype
        self.placed: np.ndarray | None = None  # allocated on first use, in the dtype the model returns
        self.acc = np.zeros((blended, cap, self.width), dtype=np.float32)
        self.wsum = np.zeros((cap, self.width), dtype=np.float32) if blended else None
        self.valid = np.ones((cap, self.width), dtype=bool)
        self.any_invalid = False
        self.filled = 0  # buffer rows that placed tiles have written

    def add(
        self,
        tile: Tile,
        placed: np.ndarray | None,
        blended: np.ndarray | None,
        valid: np.ndarray | None,
    ) -> None:
        """``placed``: ``(bands, h, w)`` core values for ``tile.out``; ``blended``: padded output values."""
        o = tile.out
        r0, h = o.row_off - self.base, o.height
        src, dst = self._columns(o.col_off, o.width)
        if src is not None:
            if placed is not None:
                if self.placed is None:
                    self._allocate(placed.dtype)
                self.placed[:, r0 : r0 + h, dst] = placed[:, :h, src]
                self.filled = max(self.filled, r0 + h)
            if valid is not None:
                self.valid[r0 : r0 + h, dst] = valid[:h, src]
                self.any_invalid = True
        if blended is None:
            return
        b = tile.blend_out
        br0, bh = b.row_off - self.base, b.height
        src, dst = self._columns(b.col_off, b.width)
        if src is None:
            return
        oy, ox = tile.blend_offset
        src = slice(ox + src.start, ox + src.stop)
        weights = blend_weights(blended.shape[1:], self.oo, self.blend, tile.edges)[oy : oy + bh, src]
        self.acc[:, br0 : br0 + bh, dst] += blended[:, oy : oy + bh, src] * weights
        self.wsum[br0 : br0 + bh, dst] += weights

    def _columns(self, col_off: int, width: int) -> tuple[slice | None, slice | None]:
        """Columns ``[col_off, col_off + width)`` within this assembler: slices into the tile's array and into the
        buffers; ``(None, None)`` when none of them is."""
        start, stop = max(col_off, self.c0), min(col_off + width, self.c1)
        if stop <= start:
            return None, None
        return slice(start - col_off, stop - col_off), slice(start - self.c0, stop - self.c0)

    def _allocate(self, dtype: np.dtype) -> None:
        self.placed = np.zeros((self.n_placed, self.valid.shape[0], self.width), dtype=dtype)

    def skip(self, tile: Tile) -> None:
        """A fully masked tile: its core is invalid and it contributes nothing."""
        o = tile.out
        _, dst = self._columns(o.col_off, o.width)
        if dst is not None:
            self.valid[o.row_off - self.base : o.row_off - self.base + o.height, dst] = False
            self.any_invalid = True

    def finish_row(self, tile_row: int, spans: Spans = SERIAL) -> Iterator[Block]:
        """Emit the rows that are final once ``tile_row`` is complete (aligned to ``align`` rows). ``spans``:
        threads that divide blended sums by their weights in column spans at once (the same bits)."""
        final = self.plan.rows_final_after(tile_row, self.blend != "crop")
        if final < self.height:
            final = self.base + (final - self.base) // self.align * self.align
        n = final - self.base
        if n <= 0:
            return
        parts = []
        if self.n_placed and self.placed is None:
            self._allocate(self.dtype)
        if self.n_placed:
            parts.append(self.placed[:, :n])  # handed out, not copied: the consumer is done when we resume
        if self.acc.shape[0]:
            acc, wsum = self.acc[:, :n], self.wsum[None, :n]
            mean = np.empty(acc.shape, np.result_type(acc, wsum))

            def divide(c0: int, c1: int) -> None:
                with np.errstate(invalid="ignore", divide="ignore"):
                    np.divide(acc[..., c0:c1], wsum[..., c0:c1], out=mean[..., c0:c1])

            spans.run(self.width, n, divide)
            parts.append(mean)
        if len(parts) == 1:
            data = parts[0]
        else:
            dtype = np.result_type(*parts)
            data = np.concatenate([p.astype(dtype, copy=False) for p in parts])
        valid = self.valid[:n].copy() if self.any_invalid else None
        yield Block(Window(self.c0, self.base, self.width, n), data, valid)
        for arr in (self.acc, self.wsum, self.valid):
            if arr is None:
                continue
            keep = arr.shape[-2] - n
            arr[..., :keep, :] = arr[..., n:, :]
            arr[..., keep:, :] = 1 if arr is self.valid else 0
        # Placed rows need no clearing: every output pixel is placed by exactly one tile or marked invalid (and
        # then becomes nodata), so only rows already written below the emitted ones move up.
        keep = max(0, self.filled - n)
        if keep and self.placed is not None:
            self.placed[:, :keep] = self.placed[:, n : n + keep]
        self.filled = keep
        self.base = final
        if self.any_invalid and self.valid.all():
            self.any_invalid = False


def column_bands(plan: TilePlan, blend: bool, bands: int, align: int, budget: int,
                 unit: int = 512) -> list[tuple[int, int]]:
    """Output column ranges ``[c0, c1)`` to assemble one after the other so that the assembler's buffers and the
    strips it emits (``bands`` float32 bands, rows aligned to ``align``) take about ``budget`` bytes at most.

    One band of every column while that fits (the usual case: nothing changes). Otherwise bands of whole
    ``unit`` columns (the COG's blocks), widened to whole tiles when that costs less than doubling: a tile whose
    output straddles two bands is computed for each of them, as are the neighbours a blend reaches into.
    """
    g = plan.geometry
    height, width = plan.output_shape
    oo = g.output_overlap if blend and g.output_overlap else None
    rows = g.out.y + 2 * (oo.y if oo else 0) + max(1, align) + 1
    per_column = rows * (4 * bands + 5) + 2 * min(height, max(1, align)) * 4 * bands
    columns = budget // max(1, per_column)
    if columns >= width:
        return [(0, width)]
    step = math.lcm(g.out.x, unit)
    if step > 2 * max(columns, unit):
        step = unit
    n = max(1, columns // step) * step
    return [(c, min(width, c + n)) for c in range(0, width, n)]
