"""Rasters that GDAL opens: local files, COGs, VRTs, /vsicurl/ and s3:// URLs, or an open rasterio dataset."""

from __future__ import annotations

import contextlib
import math
import os
import re
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioError, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from ..errors import (
    InputError,
    NotGeoreferencedError,
    SourceNotFoundError,
    SourceReadError,
    SpecError,
    UnknownCRSError,
)
from .base import BaseSource, Grid, ThreadHandles, aligned_grid, select_bands
from .blocks import BlockStore

__all__ = ["RasterioSource", "parse_crs", "warp_grid", "warp_scales"]


def parse_crs(value: Any) -> CRS:
    try:
        return value if isinstance(value, CRS) else CRS.from_user_input(value)
    except (CRSError, ValueError) as exc:  # "EPSG:nonsense" is a ValueError
        raise UnknownCRSError(
            f"unknown CRS {value!r}: {exc}. Use an EPSG code like 'EPSG:32633', a PROJ string or WKT"
        ) from None


def open_dataset(path: str | os.PathLike) -> rasterio.io.DatasetReader:
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        text = str(exc)
        local = not str(path).startswith(("/vsi", "http://", "https://", "s3://", "gs://", "az://"))
        if (local and not os.path.exists(path)) or "No such file" in text or "does not exist" in text:
            raise SourceNotFoundError(f"input raster not found: {path}; check the path or URL") from None
        hint = ""
        if local and os.path.isdir(path):  # GDAL opens some folders (a Zarr store, an Arc/Info grid), not this one
            hint = (f"; {path} is a folder: give one of its rasters, or a quoted glob of them such as "
                    f"'{os.path.join(str(path), '*.tif')}' to predict their mosaic")
            text = text.rstrip(". ")
        raise InputError(f"GDAL cannot open {path} as a raster: {text}{hint}") from None


class RasterioSource(BaseSource):
    """Reads windows of selected bands; each thread gets its own dataset handle (GDAL handles are not shared).

    ``warp`` (a grid and a resampling) reads the raster warped onto that grid, for ``fix_input_proj``.
    """

    def __init__(
        self,
        src: str | os.PathLike | rasterio.io.DatasetReader,
        bands: Sequence[str | int] | None = None,
        warp: tuple[Grid, Resampling] | None = None,
    ) -> None:
        if isinstance(src, (str, os.PathLike)):
            self._given = None
            self.path = str(src)
            ds = open_dataset(self.path)
        else:
            self._given = src
            self.path = src.name
            ds = src
        self._local = threading.local()
        self._lock = threading.Lock()
        """Serializes the reads of a dataset that cannot be reopened (one handle for every thread)."""
        self._handles = ThreadHandles()  # its own lock: a shared handle's first read makes a VRT under _lock
        try:
            if ds.crs is None or (ds.transform.is_identity and not ds.gcps[0]):
                raise NotGeoreferencedError(
                    f"{self.path} has no CRS or geotransform, so outputs could not be placed on a map; "
                    "georeference it first (e.g. gdal_translate -a_srs EPSG:XXXX -a_ullr ...)"
                )
            self.native = Grid(ds.crs, ds.transform, (ds.height, ds.width))
            names = [d or f"b{i + 1}" for i, d in enumerate(ds.descriptions)]
            self.indexes = [i + 1 for i in select_bands(names, bands)]
            self.band_names = [names[i - 1] for i in self.indexes]
            self.dtypes = [np.dtype(ds.dtypes[i - 1]) for i in self.indexes]
            self.dtype = np.result_type(*self.dtypes)
            self.nodata = ds.nodata
            flags = [ds.mask_flag_enums[i - 1] for i in self.indexes]
            self.has_mask = any(f != [MaskFlags.all_valid] for f in flags)
            # Masks that only come from nodata values are computed from the data: read_masks() would read and
            # decode every block a second time (3-4x the cost of the read itself).
            self._nodata_only = all(f in ([MaskFlags.nodata], [MaskFlags.all_valid]) for f in flags)
            self._nodatavals = [ds.nodatavals[i - 1] for i in self.indexes]
            self.properties = parse_tags(ds.tags())
            self.block_shape = ds.block_shapes[0]
            self.pixel_bytes = sum(np.dtype(t).itemsize for t in ds.dtypes)
            """Bytes of one pixel over all of the file's bands: what decoding an interleaved block caches."""
        finally:
            if self._given is None:
                ds.close()
        self.warp = warp
        """The grid and resampling this source warps onto, or None."""
        self.warped = warp is not None
        self.grid = warp[0] if warp else self.native
        # Re-openable paths get one handle per thread; in-memory datasets share one handle under a lock.
        self._shared = self._given is not None and not reopenable(self.path)
        self._store: BlockStore | None = None

    @property
    def paths(self) -> list[str]:
        return [self.path] if self.path else []

    def recipe(self) -> tuple[type[RasterioSource], tuple[Any, ...], dict[str, Any]]:
        """Open the same file, bands and warp on a worker; refuse a source no other process can open."""
        if not reopenable(self.path):
            if self._gone():
                raise SourceNotFoundError(
                    f"engine='dask' reopens the input on every worker, but {self.path} no longer exists: it was "
                    "deleted, moved or renamed after it was opened; put it back (or open it again where it is now) "
                    "and run again"
                )
            raise SpecError(
                f"engine='dask' reopens the input on every worker, but {self.path!r} is an in-memory dataset; "
                "pass a path or URL that every worker can open"
            )
        return RasterioSource, (self.path, list(self.indexes)), {"warp": self.warp}

    def _gone(self) -> bool:
        """Whether a source that cannot be reopened was a file, since removed, rather than an in-memory dataset (a
        MEM dataset, named '', or a GDAL connection string such as ``NETCDF:"f.nc":var``)."""
        given = self._given
        return (bool(self.path) and not re.match(r"[A-Za-z0-9_]{2,}:", self.path)
                and (given is None or given.driver != "MEM"))

    def _dataset(self):
        if self._shared:
            ds = self._given
        else:
            ds = getattr(self._local, "ds", None)
            if ds is None:
                ds = open_dataset(self.path)
                self._handles.keep(ds)
                self._local.ds = ds
        if self.warp is None:
            return ds
        vrt = getattr(self._local, "vrt", None)
        if vrt is None:
            grid, resampling = self.warp
            # Without a nodata value, an alpha band is what marks pixels outside the source as masked.
            vrt = WarpedVRT(
                ds, crs=grid.crs, transform=grid.transform, width=grid.shape[1], height=grid.shape[0],
                resampling=resampling, add_alpha=ds.nodata is None, **warp_scales(self.native, grid, resampling),
            )
            self._handles.keep(vrt)
            self._local.vrt = vrt
        return vrt

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        data, masks = self.read_masked(window)
        return data, (None if masks is None else masks.all(axis=0))

    def shared_block_shape(self) -> tuple[int, int] | None:
        """Whole blocks of a tiled file, or groups of strips at least 256 rows high when that many full-width rows
        take at most 64 MiB; None for warped reads and in-memory datasets (one handle: nothing runs in parallel)."""
        if self.warp is not None or self._shared:
            return None
        (bh, bw), (h, w) = self.block_shape, self.native.shape
        if bw < w:
            return (bh, bw) if bh * bw >= 64 * 64 else None
        rows = min(h, bh * math.ceil(256 / bh))
        return (rows, w) if rows * w * self.pixel_bytes <= 64 * 2**20 else None

    def shared_pixel_bytes(self) -> int:
        """The selected bands' values, and a mask byte each when the file has masks (nodata or internal)."""
        return len(self.indexes) * (np.dtype(self.dtype).itemsize + self.has_mask)

    def share_blocks(self, budget: int, threads: int = 0) -> None:
        """Serve reads from one :class:`~tilecast.sources.blocks.BlockStore` of ``budget`` bytes (0: stop), with
        ``threads`` threads decoding the blocks of announced windows (:meth:`expect`)."""
        if self._store is not None:
            self._store.close()
            self._store = None
        block = self.shared_block_shape()
        if budget > 0 and block is not None:
            self._store = BlockStore(self.native.shape, block, self._read_block, budget, threads)

    def expect(self, window: Window) -> None:
        """Start decoding the blocks of ``window``, which will be read soon (with shared blocks only)."""
        store = self._store
        if store is not None:
            store.expect(window)

    def _read_block(self, window: Window, into: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
        return self._read(self._dataset(), window, into)

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands, h, w)`` data and each band's own ``(bands, h, w)`` mask (None if all valid)."""
        store = self._store
        with self._lock if self._shared else contextlib.nullcontext():
            try:
                data, masks = store.read(window) if store is not None else self._read(self._dataset(), window)
            except GDAL_READ_ERRORS as exc:
                error = read_error(self.path, window, exc)
            else:
                return data, (None if masks is None or masks.all() else masks)
        try:
            raise error
        finally:  # no error <-> frame cycle: the source (and its thread-local handles) goes when its caller is done
            del error

    def _read(self, ds, window: Window, into: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        if self.warp is not None and self.nodata is None:
            # The warped VRT's last band is the alpha we asked for: outside the source footprint it is 0.
            data = ds.read([*self.indexes, ds.count], window=window)
            inside = data[-1] > 0
            data = data[:-1]
            if self.has_mask:
                return data, (ds.read_masks(self.indexes, window=window) > 0) & inside
            return data, np.broadcast_to(inside, data.shape)
        data = ds.read(self.indexes, window=window, out=into)
        if not self.has_mask and self.warp is None:
            return data, None
        if self.warp is None and self._nodata_only:
            return data, _nodata_masks(data, self._nodatavals)
        return data, ds.read_masks(self.indexes, window=window) > 0

    def close(self) -> None:
        self.share_blocks(0)
        self._handles.close()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RasterioSource({self.path!r}, bands={self.band_names})"


def warp_grid(
    native: Grid, crs: CRS | None, resolution: tuple[float, float] | None
) -> Grid:
    """The grid covering ``native`` in ``crs`` at ``resolution`` (GDAL's suggestion when None), snapped to whole
    multiples of the resolution."""
    from rasterio.warp import calculate_default_transform, transform_bounds

    dst_crs = crs or native.crs
    if resolution is None:
        h, w = native.shape
        left, bottom, right, top = native.bounds
        t, _, _ = calculate_default_transform(native.crs, dst_crs, w, h, left=left, bottom=bottom, right=right,
                                              top=top)
        resolution = (abs(t.a), abs(t.e))
    bounds = transform_bounds(native.crs, dst_crs, *native.bounds, densify_pts=21)
    return aligned_grid(dst_crs, bounds, resolution)


def warp_scales(native: Grid, grid: Grid, resampling: Resampling, footprint: bool = False) -> dict[str, str]:
    """GDAL warp options that fix the resampling scale (destination pixels per source pixel) to the one a warp of
    the whole raster uses (``rasterio.warp.reproject`` onto ``grid``): the destination grid over the source window
    under it. With ``footprint`` (a mosaic member, a small part of a large grid), the destination window that the
    source covers instead of the whole grid.

    Without them GDAL derives the scale from each window it warps, so a pixel's value would depend on the tile
    layout (a bilinear 10 m UTM to 0.0001 degree warp differed by more than 1 on values near 150). Nearest
    neighbour does not use the scale, so it gets none.

    GDAL still approximates the coordinate transformation along each row of a window (to 1/8 pixel, as
    ``reproject`` does over the whole grid); where a strong upsampling makes that approximation differ between
    windows, a window can still differ from the whole-raster warp by that much.
    """
    if resampling == Resampling.nearest:
        return {}
    from rasterio.warp import transform_bounds

    try:
        if footprint:
            cols, rows = _pixel_span(grid, transform_bounds(native.crs, grid.crs, *native.bounds, densify_pts=21))
        else:
            cols, rows = (0, grid.shape[1]), (0, grid.shape[0])
        back = transform_bounds(grid.crs, native.crs, *_window_bounds(grid, cols, rows), densify_pts=21)
        src_cols, src_rows = _pixel_span(native, back)
    except (CRSError, RasterioError, CPLE_BaseError, ValueError, ZeroDivisionError):
        return {}
    width, height = cols[1] - cols[0], rows[1] - rows[0]
    src_w, src_h = src_cols[1] - src_cols[0], src_rows[1] - src_rows[0]
    if min(width, height, src_w, src_h) <= 0:
        return {}
    return {"XSCALE": repr(width / src_w), "YSCALE": repr(height / src_h)}


def _pixel_span(grid: Grid, box: Sequence[float]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Whole pixel columns and rows ``((c0, c1), (r0, r1))`` of ``grid`` under ``box``, clamped to the grid."""
    left, bottom, right, top = box
    inv = ~grid.transform
    xs, ys = zip(*(inv * p for p in ((left, top), (right, top), (left, bottom), (right, bottom))), strict=True)
    h, w = grid.shape
    eps = 1e-6
    c0, c1 = max(0, math.floor(min(xs) + eps)), min(w, math.ceil(max(xs) - eps))
    r0, r1 = max(0, math.floor(min(ys) + eps)), min(h, math.ceil(max(ys) - eps))
    return (c0, c1), (r0, r1)


def _window_bounds(grid: Grid, cols: tuple[int, int], rows: tuple[int, int]) -> tuple[float, float, float, float]:
    from rasterio.transform import array_bounds

    t = grid.transform * grid.transform.translation(cols[0], rows[0])
    return array_bounds(rows[1] - rows[0], cols[1] - cols[0], t)


def _nodata_masks(data: np.ndarray, nodatavals: Sequence[float | None]) -> np.ndarray | None:
    """GDAL's per-band nodata masks, from the data already read: valid where the band is not its nodata value;
    None when every pixel is valid."""
    masks = None
    for i, (band, nd) in enumerate(zip(data, nodatavals, strict=True)):
        if nd is None:
            continue
        if math.isnan(nd):
            if band.dtype.kind != "f":
                continue
            valid = ~np.isnan(band)
        else:
            if band.dtype.kind in "iu":
                info = np.iinfo(band.dtype)
                if nd != int(nd) or not info.min <= nd <= info.max:
                    continue  # a nodata value the band cannot hold masks nothing
            valid = band != np.asarray(nd).astype(band.dtype)
        if masks is None:
            masks = np.ones(data.shape, dtype=bool)
        masks[i] = valid
    return masks


GDAL_READ_ERRORS = (RasterioError, CPLE_BaseError)
"""What a read of a dataset that opened fine raises when the file is truncated or corrupt."""


def read_error(path: str, window: Window, exc: BaseException, of: str = "") -> SourceReadError:
    """The error for a ``window`` of ``path`` that GDAL failed to read (``of``: whose grid the window is on, when
    not the file's). Raise it outside the ``except`` block, so GDAL's error is not chained: its CPLE exceptions
    cannot be unpickled, which made Dask hand the client a bare Exception instead of this one."""
    return SourceReadError(
        f"cannot read rows {window.row_off}:{window.row_off + window.height}, cols "
        f"{window.col_off}:{window.col_off + window.width} of {of + ' from member ' if of else ''}{path}: "
        f"{_gdal_message(exc)}. The file is truncated, corrupt or changed since the prediction was planned; check it "
        f"(gdalinfo -checksum {path}), then re-create or re-download it and run again"
    )


def _gdal_message(exc: BaseException) -> str:
    """The GDAL messages behind a rasterio error: rasterio's own says only 'see previous exception'."""
    messages: list[str] = []
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        text = str(seen).strip().rstrip(".")
        if text and "previous exception" not in text and not any(text in m for m in messages):
            messages.append(text)
        seen = seen.__cause__ or seen.__context__
    return "; ".join(messages) or type(exc).__name__


def reopenable(path: str) -> bool:
    return bool(path) and (os.path.exists(path) or path.startswith(("/vsi", "http", "s3://", "gs://", "az://")))


def parse_tags(tags: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tags.items():
        for conv in (int, float):
            try:
                out[k] = conv(v)
                break
            except ValueError:
                continue
        else:
            out[k] = {"true": True, "false": False}.get(v.lower(), v)
    return out
