"""Read pixel values or patches at many sample positions with few reads.

Samples are grouped by the chunk of the raster they fall in; each chunk is read once (with the patch halo) and
every sample inside it is sliced from that block. Memory is bounded by one chunk plus ``max_batch`` patches,
whatever the number of samples.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from rasterio.windows import Window

from .._gdal import gdal_cache
from ..errors import RegionError, SpecError
from ..plan import XY
from ..resources import Resources
from ..sources.base import Source, band_dtypes

__all__ = [
    "Batch", "bounded_cache", "default_for", "group_order", "patch_offset", "read_at",
]


@dataclass
class Batch:
    index: np.ndarray
    """Positions of these samples in the caller's arrays."""
    values: np.ndarray
    """``(n, bands, ph, pw)`` in the source dtype; masked pixels already hold the default value."""
    valid: np.ndarray
    """``(n, ph, pw)`` bool: pixel inside the raster and not masked."""


def bounded_cache(megabytes: int | None = None) -> contextlib.AbstractContextManager:
    """A small GDAL block cache while exporting: grouped reads visit each block about once, so GDAL's default
    (5 % of RAM) would only add hundreds of MiB of RSS. A ``GDAL_CACHEMAX`` set by the user wins."""
    return gdal_cache(megabytes << 20) if megabytes else Resources.detect().export_gdal_cache()


def patch_offset(patch: XY) -> XY:
    """Pixels from a patch's top-left corner to its sample pixel: ``size // 2``, Earth Engine's kernel focus."""
    return XY(patch.x // 2, patch.y // 2)


def default_for(dtype: np.dtype, value: float) -> float:
    """Earth Engine's ``defaultValue``: fractional part dropped for integer bands, clamped to the band's range."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if np.isnan(value):
            raise SpecError(f"the default value nan has no {dtype} equivalent (an integer band); give a number, "
                            "e.g. --default-value 0")
        if np.isinf(value):  # clamped like any other value out of the band's range
            return float(info.max if value > 0 else info.min)
        return float(min(max(int(np.trunc(value)), info.min), info.max))
    if dtype.kind == "b":
        return float(bool(value))
    return float(value)


def group_order(rows: np.ndarray, cols: np.ndarray, chunk: int) -> np.ndarray:
    """A stable order that visits samples chunk by chunk, row-major over chunks."""
    key = (rows // chunk) * (int(cols.max(initial=0)) // chunk + 1) + cols // chunk
    return np.argsort(key, kind="stable")


def read_at(
    source: Source,
    rows: np.ndarray,
    cols: np.ndarray,
    patch: XY = XY(1, 1),  # noqa: B008 - an immutable tuple
    default_value: float = 0.0,
    chunk: int = 512,
    max_batch: int = 512,
) -> Iterator[Batch]:
    """Yield the ``patch`` around each ``(row, col)``, chunk by chunk; pixels outside the raster or masked take
    ``default_value`` (per band, cast as :func:`default_for` says) and are flagged invalid."""
    h, w = source.grid.shape
    if patch.x > w or patch.y > h:
        raise RegionError(
            f"the patch of {patch.x} x {patch.y} pixels is larger than the raster ({w} x {h}); use a smaller patch"
        )
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    if len(rows) == 0:
        return
    off = patch_offset(patch)
    fills = np.array([default_for(d, default_value) for d in band_dtypes(source)])
    order = group_order(rows, cols, chunk)
    key = (rows[order] // chunk, cols[order] // chunk)
    breaks = np.flatnonzero((np.diff(key[0]) != 0) | (np.diff(key[1]) != 0)) + 1
    for group in np.split(order, breaks):
        r, c = rows[group], cols[group]
        # The block every patch of the group needs, in raster pixels (may extend past the edges).
        r0, c0 = int(r.min()) - off.y, int(c.min()) - off.x
        r1, c1 = int(r.max()) - off.y + patch.y, int(c.max()) - off.x + patch.x
        rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, h), min(c1, w)
        block = np.empty((len(fills), r1 - r0, c1 - c0), dtype=source.dtype)
        block[:] = fills.astype(block.dtype)[:, None, None]
        valid = np.zeros((r1 - r0, c1 - c0), dtype=bool)
        if rr1 > rr0 and cc1 > cc0:
            data, mask = source.read(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
            inner = (slice(rr0 - r0, rr1 - r0), slice(cc0 - c0, cc1 - c0))
            block[(slice(None), *inner)] = data
            valid[inner] = True if mask is None else mask
            if mask is not None and not mask.all():
                sub = block[(slice(None), *inner)]
                sub[:, ~mask] = fills.astype(block.dtype)[:, None]
        pr, pc = r - off.y - r0, c - off.x - c0
        for s in range(0, len(group), max_batch):
            sl = slice(s, s + max_batch)
            if patch == (1, 1):
                vals = block[:, pr[sl], pc[sl]].T[:, :, None, None]
                ok = valid[pr[sl], pc[sl]][:, None, None]
            else:
                view = sliding_window_view(block, (patch.y, patch.x), axis=(1, 2))
                vals = np.ascontiguousarray(view[:, pr[sl], pc[sl]].transpose(1, 0, 2, 3))
                ok = sliding_window_view(valid, (patch.y, patch.x))[pr[sl], pc[sl]]
            yield Batch(group[sl], vals, ok)
