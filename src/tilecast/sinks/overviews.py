"""The first overview level, computed while the output streams, so the COG conversion only has to compress.

GDAL's COG driver builds overviews after the last tile: it reads the whole full-resolution image once more and
averages it on one thread, which is the serial part of the conversion (``docs/benchmarks.md`` says how much).
Here each strip is reduced 2 x 2 as it is written, into the temporary file's external overview (``<temp>.ovr``, a
GeoTIFF GDAL picks up by name); GDAL then derives the smaller levels from that quarter-size image, and the COG
driver uses the existing overviews instead of computing them (``OVERVIEWS=AUTO``).

The reduction is GDAL's: ``average`` is the mean of the valid pixels of each 2 x 2 cell (nodata excluded, and NaN
when it is the nodata value; integers rounded half up; a cell with no valid pixel is nodata); ``nearest`` takes
each cell's top-left pixel. Cells past an odd edge have fewer pixels.
"""

from __future__ import annotations

import math

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..parallel import SERIAL, Spans
from ..resources import Resources, one_pass_gdal_cache

__all__ = ["OverviewWriter", "chunk_alignable", "derive_levels", "downsample2", "downsample2_spans", "level_profile",
           "overview_factors", "write_chunk_level"]


def overview_factors(shape: tuple[int, int], blocksize: int) -> list[int]:
    """The decimation factors GDAL's COG driver makes by default: halve until the level fits in one block."""
    size = max(shape)
    if size <= 1:
        return []
    if size <= blocksize:
        return [2]  # cog_options asks for one level here (GDAL's AUTO would make none)
    factors = []
    f = 1
    while math.ceil(size / f) > blocksize:
        f *= 2
        factors.append(f)
    return factors


def downsample2(rows: np.ndarray, resampling: str, nodata: float | None) -> np.ndarray:
    """One overview step over ``(bands, h, w)``; odd edges give cells of fewer pixels.

    Each cell's arithmetic depends on that cell alone, so strips and chunks of any extent give the same bits.
    """
    if resampling == "nearest":
        return rows[:, ::2, ::2]
    c, h, w = rows.shape
    is_float = rows.dtype.kind == "f"
    nan_nodata = isinstance(nodata, float) and math.isnan(nodata)
    # float32 sums four values of up to 16 bits exactly; wider types need float64.
    acc = np.float32 if rows.dtype.itemsize <= 2 or rows.dtype == np.float32 else np.float64
    total = np.zeros((c, (h + 1) // 2, (w + 1) // 2), acc)
    count = np.zeros(total.shape, np.uint8)
    valid = None
    if nodata is not None:
        # As GDAL: a NaN that is not the nodata value counts as valid, so its cell becomes NaN.
        valid = ~np.isnan(rows) if nan_nodata else rows != nodata
        if valid.all():  # the usual strip: one test instead of one per pixel of each of the four parts
            valid = None
    for dy in (0, 1):
        for dx in (0, 1):
            part = rows[:, dy::2, dx::2]
            cell = (slice(None), slice(0, part.shape[1]), slice(0, part.shape[2]))
            if valid is None:
                total[cell] += part
                count[cell] += 1
                continue
            ok = valid[:, dy::2, dx::2]
            total[cell] += np.where(ok, part, 0)
            count[cell] += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count
    if rows.dtype.kind in "iu":
        info = np.iinfo(rows.dtype)
        mean = np.clip(np.floor(mean + 0.5), info.min, info.max)
    if valid is None:  # every cell has a pixel
        return mean.astype(rows.dtype)
    fill = nodata if nodata is not None else (np.nan if is_float else 0)
    return np.where(count > 0, mean, fill).astype(rows.dtype)


def level_profile(profile: dict) -> dict:
    """The first overview level's GeoTIFF profile for a full-resolution ``profile`` (uncompressed, tiled)."""
    width, height, t = profile["width"], profile["height"], profile["transform"]
    w2, h2 = (width + 1) // 2, (height + 1) // 2
    return {**profile, "width": w2, "height": h2, "blockysize": 256, "blockxsize": 256,
            "transform": t * t.scale(width / w2, height / h2)}


def derive_levels(path: str, resampling: str, factors: list[int]) -> None:
    """The levels after the first, computed by GDAL from the quarter-size first level in ``path``; one pass over
    it, so with a small block cache (the run's, sized for overlapping reads, would fill up with it), and on the
    policy's writer threads (GDAL computes overview blocks in parallel)."""
    rest = [f // 2 for f in factors[1:]]
    if rest:
        threads = str(Resources.detect().writer_threads)
        with one_pass_gdal_cache(), rasterio.Env(GDAL_NUM_THREADS=threads), rasterio.open(path, "r+") as dst:
            dst.build_overviews(rest, Resampling[resampling])


def chunk_alignable(chunk: tuple[int, int], shape: tuple[int, int]) -> bool:
    """Whether chunks of ``chunk`` output pixels reduce 2 x 2 on their own: every chunk starts on an even row and
    column, so no 2 x 2 cell straddles two chunks."""
    return all(c % 2 == 0 or c >= n for c, n in zip(chunk, shape, strict=True))


def downsample2_spans(rows: np.ndarray, resampling: str, nodata: float | None, spans: Spans = SERIAL) -> np.ndarray:
    """:func:`downsample2` of ``rows`` in column spans at even offsets, on ``spans``' threads: the same bits, since
    no 2 x 2 cell straddles two spans."""
    c, h, w = rows.shape
    out = np.empty((c, (h + 1) // 2, (w + 1) // 2), rows.dtype)

    def reduce(c0: int, c1: int) -> None:
        out[:, :, c0 // 2 : (c1 + 1) // 2] = downsample2(rows[:, :, c0:c1], resampling, nodata)

    spans.run(w, h, reduce)
    return out


def write_chunk_level(dst, window: Window, data: np.ndarray, resampling: str, nodata: float | None,
                      spans: Spans = SERIAL) -> None:
    """Reduce one chunk (at even offsets) into the open first level ``dst``."""
    out = downsample2_spans(data, resampling, nodata, spans)
    dst.write(out, window=Window(int(window.col_off) // 2, int(window.row_off) // 2, out.shape[2], out.shape[1]))


class OverviewWriter:
    """Streams the output, in row order, into the first overview level of ``path``: full-width strips, or the
    strips of one column band after another (at even offsets, as :func:`~tilecast.assemble.column_bands` makes
    them).

    Anything else (rows out of order, a window at an odd offset) makes :attr:`ok` false; the caller then removes
    the file and lets GDAL build the overviews as before.
    """

    def __init__(self, path: str, profile: dict, resampling: str, nodata: float | None, factors: list[int],
                 spans: Spans = SERIAL) -> None:
        self.path, self.resampling, self.nodata, self.factors = path, resampling, nodata, factors
        self.spans = spans
        self.width, self.height = profile["width"], profile["height"]
        self.next_row = 0
        self.carry: np.ndarray | None = None
        self.ok = True
        self.covered = 0
        # Sparse, as the temporary file: an aborted run closes it without writing every block left.
        self.dst = rasterio.open(path, "w", **{**level_profile(profile), "sparse_ok": True})
        self.out_row = 0

    def write(self, window: Window, data: np.ndarray) -> None:
        if not self.ok:
            return
        col, width = int(window.col_off), int(window.width)
        if col != 0 or width != self.width:
            self._write_band(window, data)
            return
        if int(window.row_off) != self.next_row:
            self.ok = False
            return
        self.next_row += int(window.height)
        self.covered += int(window.height) * width
        if self.carry is not None:
            data = np.concatenate([self.carry, data], axis=1)
            self.carry = None
        if data.shape[1] % 2 and self.next_row < self.height:
            data, self.carry = data[:, :-1], data[:, -1:].copy()  # the strip's buffer is reused after write
        if data.shape[1]:
            self._emit(data)

    def _write_band(self, window: Window, data: np.ndarray) -> None:
        """A part of a column band: reduced on its own, which needs even offsets and sizes (or the raster's edge)."""
        row, col = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        aligned = row % 2 == 0 and col % 2 == 0 and (h % 2 == 0 or row + h == self.height) and (
            w % 2 == 0 or col + w == self.width)
        if not aligned or self.carry is not None or self.next_row:
            self.ok = False
            return
        write_chunk_level(self.dst, window, data, self.resampling, self.nodata, self.spans)
        self.covered += h * w

    def _emit(self, rows: np.ndarray) -> None:
        out = downsample2_spans(rows, self.resampling, self.nodata, self.spans)
        self.dst.write(out, window=Window(0, self.out_row, out.shape[2], out.shape[1]))
        self.out_row += out.shape[1]

    def finish(self) -> bool:
        """Close the level; derive the smaller ones with GDAL. False if streaming was abandoned."""
        if self.carry is not None:
            self._emit(self.carry)
            self.carry = None
        self.dst.close()
        if not self.ok or self.covered != self.width * self.height:
            return False
        derive_levels(self.path, self.resampling, self.factors)
        return True

    def abort(self) -> None:
        if not self.dst.closed:
            self.dst.close()
