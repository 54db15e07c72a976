"""Many rasters as one: a list or glob of files, or STAC items, mosaicked on one grid, warped window by window.

Nothing is warped up front. Each ``read(window)`` asks only the members whose footprint meets the window, each
through a GDAL ``WarpedVRT`` onto the mosaic's grid, so a tile costs the pixels it covers whatever the collection
size. Members in another CRS or resolution are reprojected on the fly. Overlaps follow Earth Engine's
``ImageCollection.mosaic()``: the last member on top, where it is valid.

A member is one or more files whose bands are stacked (a STAC item with one asset per band); a plain file is a
member of one file.
"""

from __future__ import annotations

import glob
import math
import os
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from ..errors import BandMismatchError, InputError, NotGeoreferencedError, SourceNotFoundError, SpecError
from .base import BaseSource, Grid, ThreadHandles, aligned_grid, select_bands
from .rasterio_source import GDAL_READ_ERRORS, open_dataset, parse_crs, parse_tags, read_error, warp_scales

__all__ = ["MosaicSource", "expand_paths", "glob_files", "is_pattern"]

_GLOB_CHARS = "*?["


def is_pattern(text: str) -> bool:
    """Whether ``text`` is a glob pattern to expand: it holds ``*?[`` and is not a remote path, nor a file that exists
    under that very name (``run[1]/scene.tif``), which glob would never match."""
    return (any(ch in text for ch in _GLOB_CHARS) and not text.startswith(("/vsi", "http://", "https://"))
            and not os.path.exists(text))


def glob_files(pattern: str) -> list[str]:
    """The files a glob pattern matches, sorted; the letters of the file suffix (``*.tif``, ``*.tif*``) match in any
    case (``x.TIF``), as on Windows and macOS: Landsat ships ``.TIF``, and a mosaic that skipped them would silently
    have holes."""
    head, tail = os.path.split(pattern)
    stem, dot, suffix = tail.rpartition(".")
    if dot and stem and "[" not in suffix and "]" not in suffix:
        tail = stem + "." + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in suffix)
    return sorted(glob.glob(os.path.join(head, tail)))


def expand_paths(obj: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """A glob pattern or a list of paths/URLs, as a sorted list (globs) or in the given order (lists; a pattern in
    the list, as in ``tilecast predict 'scenes/*.tif' extra.tif``, gives its sorted matches there)."""
    if isinstance(obj, (str, os.PathLike)):
        text = str(obj)
        if is_pattern(text):
            paths = glob_files(text)
            if not paths:
                raise SourceNotFoundError(f"no raster matches {text!r}; check the pattern and the folder")
            return paths
        return [text]
    paths = [p for item in obj for p in expand_paths(item)]
    if not paths:
        raise InputError("the list of rasters is empty; pass at least one path or URL")
    return paths


class _Member:
    """One mosaic member: its files, footprint on the mosaic grid, band layout and mask behaviour."""

    def __init__(self, files: Sequence[str]) -> None:
        self.files = list(files)
        self.names: list[str] = []
        self.file_bands: list[tuple[int, int]] = []  # (file position, 1-based band) per member band
        self.dtypes: list[np.dtype] = []
        self.has_mask = False
        self.crs: CRS | None = None
        self.bounds: tuple[float, float, float, float] | None = None
        self.resolution: tuple[float, float] | None = None
        self.properties: dict[str, Any] = {}
        for f_i, path in enumerate(self.files):
            with open_dataset(path) as ds:
                if ds.crs is None or ds.transform.is_identity:
                    raise NotGeoreferencedError(
                        f"{path} has no CRS or geotransform, so it cannot join a mosaic; georeference it first"
                    )
                if f_i == 0:
                    self.crs, self.bounds = ds.crs, tuple(ds.bounds)
                    self.resolution = (abs(ds.transform.a), abs(ds.transform.e))
                    self.properties = parse_tags(ds.tags())
                for b in range(ds.count):
                    desc = ds.descriptions[b]
                    name = desc or (f"b{b + 1}" if len(self.files) == 1 else f"{_stem(path)}_{b + 1}")
                    if len(self.files) > 1 and ds.count == 1 and not desc:
                        name = _stem(path)
                    self.names.append(name)
                    self.file_bands.append((f_i, b + 1))
                    self.dtypes.append(np.dtype(ds.dtypes[b]))
                    self.has_mask |= ds.mask_flag_enums[b] != [MaskFlags.all_valid]


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]


class MosaicSource(BaseSource):
    """A :class:`~tilecast.sources.base.Source` over many rasters.

    ``members``: lists of files whose bands are stacked (usually one file each). ``bands`` selects by 1-based
    index or name, as for a single raster. ``crs``/``resolution`` choose the grid (default: the first member's);
    ``grid`` sets it outright. Thread-safe; pickles as its arguments, so Dask workers reopen the files.
    """

    def __init__(
        self,
        members: Sequence[Sequence[str]],
        bands: Sequence[str | int] | None = None,
        crs: Any = None,
        resolution: float | tuple[float, float] | None = None,
        resampling: str | Resampling = "nearest",
        grid: Grid | None = None,
        band_names: Sequence[str] | None = None,
    ) -> None:
        self._args = (members, bands, crs, resolution, resampling, grid, band_names)
        if not members:
            raise InputError("a mosaic needs at least one raster")
        self.members = [_Member(m) for m in members]
        first = self.members[0]
        names = list(band_names) if band_names is not None else first.names
        if len(names) != len(first.names):
            raise InputError(f"{len(names)} band names {names} given for {first.files}, which has {len(first.names)} "
                             "band(s); give one name per band")
        for m in self.members[1:]:
            if len(m.names) != len(first.names):
                raise BandMismatchError(
                    f"mosaic members must have the same bands: {m.files} has {len(m.names)} band(s), "
                    f"{first.files} has {len(first.names)}; select matching files or assets"
                )
        self.selected = select_bands(names, bands)
        self.band_names = [names[i] for i in self.selected]
        dtypes = [d for m in self.members for i, d in enumerate(m.dtypes) if i in self.selected]
        self.dtype = np.result_type(*dtypes)
        self.properties = dict(first.properties)
        try:
            self.resampling = resampling if isinstance(resampling, Resampling) else Resampling[resampling]
        except KeyError:
            raise SpecError(f"unknown resampling {resampling!r}; use e.g. 'nearest' or 'bilinear'") from None
        self.grid = grid or self._grid(parse_crs(crs) if crs is not None else first.crs, resolution)
        self.native = self.grid
        self._footprints = [self._footprint(m) for m in self.members]
        self._local = threading.local()
        self._handles = ThreadHandles()

    @property
    def paths(self) -> list[str]:
        return [f for m in self.members for f in m.files]

    def _grid(self, crs: CRS, resolution: float | tuple[float, float] | None) -> Grid:
        """The union of the members' footprints in ``crs``, aligned to whole multiples of the resolution."""
        boxes = [transform_bounds(m.crs, crs, *m.bounds, densify_pts=21) for m in self.members]
        if resolution is None:
            first = self.members[0]
            if first.crs == crs:
                rx, ry = first.resolution
            else:
                from rasterio.warp import calculate_default_transform

                with open_dataset(first.files[0]) as ds:
                    t, _, _ = calculate_default_transform(ds.crs, crs, ds.width, ds.height, *ds.bounds)
                rx, ry = abs(t.a), abs(t.e)
        elif isinstance(resolution, (int, float)):
            rx = ry = float(resolution)
        else:
            rx, ry = (float(v) for v in resolution)
        left, bottom = min(b[0] for b in boxes), min(b[1] for b in boxes)
        right, top = max(b[2] for b in boxes), max(b[3] for b in boxes)
        first = self.members[0]
        if first.crs == crs and (rx, ry) == tuple(first.resolution):
            # Keep the first member's pixel alignment, so that aligned files are copied, not resampled.
            fx, fy = first.bounds[0], first.bounds[3]
            left = fx - math.ceil((fx - left) / rx - 1e-9) * rx
            top = fy + math.ceil((top - fy) / ry - 1e-9) * ry
        else:
            return aligned_grid(crs, (left, bottom, right, top), (rx, ry))
        width = max(1, math.ceil((right - left) / rx - 1e-9))
        height = max(1, math.ceil((top - bottom) / ry - 1e-9))
        return Grid(crs, rasterio.Affine(rx, 0, left, 0, -ry, top), (height, width))

    def _footprint(self, m: _Member) -> tuple[float, float, float, float]:
        """The member's extent in mosaic pixels ``(row0, row1, col0, col1)`` (a little generous)."""
        left, bottom, right, top = transform_bounds(m.crs, self.grid.crs, *m.bounds, densify_pts=21)
        inv = ~self.grid.transform
        cols, rows = zip(*(inv * (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
        return min(rows) - 1, max(rows) + 1, min(cols) - 1, max(cols) + 1

    def _vrt(self, member: int, file: int) -> tuple[WarpedVRT, bool]:
        cache = getattr(self._local, "vrts", None)
        if cache is None:
            cache = self._local.vrts = {}
        key = (member, file)
        vrt = cache.get(key)
        if vrt is None:
            ds = open_dataset(self.members[member].files[file])
            g = self.grid
            # Without nodata or a mask, an alpha band tells where the member has pixels at all.
            alpha = ds.nodata is None and all(f == [MaskFlags.all_valid] for f in ds.mask_flag_enums)
            scales = warp_scales(Grid(ds.crs, ds.transform, (ds.height, ds.width)), g, self.resampling, footprint=True)
            vrt = WarpedVRT(ds, crs=g.crs, transform=g.transform, width=g.shape[1], height=g.shape[0],
                            resampling=self.resampling, add_alpha=alpha, **scales)
            self._handles.keep(ds, vrt)
            cache[key] = vrt = (vrt, alpha)
        return vrt

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        h, w = int(window.height), int(window.width)
        r0, c0 = window.row_off, window.col_off
        data = np.zeros((len(self.selected), h, w), dtype=self.dtype)
        valid = np.zeros((h, w), dtype=bool)
        for mi in range(len(self.members)):
            fr0, fr1, fc0, fc1 = self._footprints[mi]
            if fr1 <= r0 or fr0 >= r0 + h or fc1 <= c0 or fc0 >= c0 + w:
                continue
            values, ok = self._read_member(mi, window)
            data[:, ok] = values[:, ok]
            valid |= ok
        return data, (None if valid.all() else valid)

    def _read_member(self, mi: int, window: Window) -> tuple[np.ndarray, np.ndarray]:
        m = self.members[mi]
        by_file: dict[int, list[tuple[int, int]]] = {}
        for out_pos, band in enumerate(self.selected):
            f_i, b = m.file_bands[band]
            by_file.setdefault(f_i, []).append((out_pos, b))
        values = np.zeros((len(self.selected), int(window.height), int(window.width)), dtype=self.dtype)
        ok = np.ones((int(window.height), int(window.width)), dtype=bool)
        for f_i, pairs in by_file.items():
            vrt, alpha = self._vrt(mi, f_i)
            idx = [b for _, b in pairs]
            error = None
            try:
                if alpha:  # coverage comes from the alpha band GDAL adds while warping
                    arr = vrt.read([*idx, vrt.count], window=window)
                    ok &= arr[-1] > 0
                else:
                    arr = vrt.read(idx, window=window)
                    ok &= np.all(vrt.read_masks(idx, window=window) > 0, axis=0)
            except GDAL_READ_ERRORS as exc:
                error = read_error(m.files[f_i], window, exc, "the mosaic")
            if error is not None:
                raise error
            for k, (pos, _) in enumerate(pairs):
                values[pos] = arr[k]
        return values, ok

    def reprojected(self, crs: Any, resolution: float | tuple[float, float] | None,
                    resampling: str | Resampling = "nearest") -> MosaicSource:
        """The same members on another grid (a model's ``proj`` with ``fix_input_proj``), still warped per window."""
        members, bands, _, _, _, _, names = self._args
        return MosaicSource(members, bands, crs=crs, resolution=resolution, resampling=resampling, band_names=names)

    def close(self) -> None:
        self._handles.close()
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        members, bands, crs, resolution, resampling, _, names = self._args
        return {"args": (members, bands, crs, resolution, resampling, self.grid, names)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(*state["args"])

    def __repr__(self) -> str:
        n = len(self.members)
        return f"MosaicSource({n} member(s), bands={self.band_names}, grid={self.grid.shape})"


def mosaic_from(obj: Any, bands: Sequence[str | int] | None = None, **kwargs: Any) -> MosaicSource:
    """A mosaic of a glob pattern or a list of paths/URLs (each its own member)."""
    return MosaicSource([[p] for p in expand_paths(obj)], bands, **kwargs)
