"""Raster-derived properties (beyond Earth Engine): values at points, zonal statistics, patches around features.

Every read goes through a :class:`~tilecast.sources.Source` window, so any raster tilecast reads (GeoTIFF, COG, VRT,
xarray) works. Features are reprojected to each raster's CRS; the raster is never warped.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.features import geometry_mask
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from ..errors import InputError, RegionError, SpecError, TilecastWarning
from ..plan import XY, window_from_bounds, xy
from ..sources import Source, open_source
from .properties import Column

__all__ = ["STATS", "RasterInputs"]

STATS = ("mean", "std", "min", "max", "median", "count")
_BLOCK = 512  # points are grouped by 512 x 512 pixel blocks, one read per block


@dataclass
class _Raster:
    source: Source
    names: list[str]
    """One property name per band."""


def _open_rasters(sample: Any, bands: Sequence[str | int] | None) -> list[_Raster]:
    """A raster, a list of rasters, or ``{prefix: raster}``. Single-band files in a list are named by file stem."""
    if isinstance(sample, Mapping):
        items = [(str(k), v) for k, v in sample.items()]
        named = True
    elif isinstance(sample, (list, tuple)):
        items = [(_stem(v), v) for v in sample]
        named = len(items) > 1
    else:
        items = [(_stem(sample), sample)]
        named = False
    out = []
    for prefix, obj in items:
        src = open_source(obj, bands)
        if not named:
            names = list(src.band_names)
        elif len(src.band_names) == 1:
            names = [prefix]
        else:
            names = [f"{prefix}_{b}" for b in src.band_names]
        out.append(_Raster(src, names))
    all_names = [n for r in out for n in r.names]
    if len(set(all_names)) != len(all_names):
        raise InputError(f"the rasters give duplicate band names {all_names}; name them: sample={{'NAME': raster}} "
                         "(--sample NAME=RASTER)")
    return out


def _stem(obj: Any) -> str:
    if isinstance(obj, (str, os.PathLike)):
        return Path(str(obj)).stem
    return str(getattr(obj, "name", "raster"))


class RasterInputs:
    """Computes raster-derived properties for batches of geometries.

    ``mode``: ``"sample"`` (value of the pixel under each point), ``"zonal"`` (``stats`` over each polygon's
    pixels; points use the pixel under them) or ``"patch"`` (a ``patch_size`` window centred on each feature,
    ``(H, W, C)`` per feature in a property named ``patch``).
    """

    def __init__(
        self,
        sample: Any,
        *,
        mode: str,
        bands: Sequence[str | int] | None = None,
        stats: Sequence[str] = ("mean",),
        all_touched: bool = False,
        patch_size: int | Sequence[int] | None = None,
        fill_value: float = 0,
    ) -> None:
        if mode not in ("sample", "zonal", "patch"):
            raise SpecError(f"mode must be 'sample', 'zonal' or 'patch', got {mode!r}")
        bad = [s for s in stats if s not in STATS]
        if bad or not stats:
            raise SpecError(f"unknown statistics {bad}; choose from {list(STATS)}")
        if mode == "patch" and patch_size is None:
            raise SpecError("mode='patch' needs patch_size, e.g. patch_size=32 (--patch 32)")
        self.mode = mode
        self.stats = tuple(stats)
        self.all_touched = all_touched
        self.patch: XY | None = xy(patch_size, "patch_size") if patch_size is not None else None
        if self.patch is not None and min(self.patch) <= 0:
            raise SpecError(f"patch_size must be positive, got {tuple(self.patch)}")
        self.fill_value = fill_value
        self.rasters = _open_rasters(sample, bands)
        self._checked = False

    @classmethod
    def choose(
        cls, sample: Any, geometry_type: Callable[[], str], *, bands: Sequence[str | int] | None = None,
        stats: Sequence[str] | None = None, all_touched: bool = False, patch_size: int | Sequence[int] | None = None,
        fill_value: float = 0,
    ) -> RasterInputs | None:
        """The reader for ``sample`` (None without one), its mode from the options and the features' geometry type;
        raster options without a raster, or that the mode would ignore, are errors."""
        if sample is None:
            given = [flag for flag, on in (("stats (--stats)", stats is not None), ("bands (--bands)", bands),
                                           ("patch_size (--patch)", patch_size is not None),
                                           ("all_touched (--all-touched)", all_touched)) if on]
            if given:
                raise SpecError(f"{', '.join(given)} need a raster to read: pass sample= (--sample RASTER)")
            return None
        if patch_size is not None:
            mode = "patch"
            zonal = [f for f, on in (("stats (--stats)", stats is not None),
                                     ("all_touched (--all-touched)", all_touched)) if on]
            if zonal:
                raise SpecError(f"{' and '.join(zonal)} choose zonal statistics, but patch_size (--patch) sends the "
                                "pixels themselves; leave one of them out")
        elif stats is None and geometry_type().replace("Multi", "") == "Point":
            mode = "sample"
        else:
            mode = "zonal"
        return cls(sample, mode=mode, bands=bands, stats=tuple(stats or ("mean",)), all_touched=all_touched,
                   patch_size=patch_size, fill_value=fill_value)

    @property
    def names(self) -> list[str]:
        if self.mode == "patch":
            return ["patch"]
        bands = [n for r in self.rasters for n in r.names]
        if self.mode == "sample":
            return bands
        return [f"{b}_{s}" for b in bands for s in self.stats]

    def compute(self, geoms: Any, strict: bool = True) -> list[Column]:
        """Columns for a GeoSeries (with a CRS); empty or missing geometries give nulls.

        The first batch is checked against each raster's bounds: features that miss every raster usually carry the
        wrong CRS. That raises :class:`InputError` when ``strict``, else warns once.
        """
        if geoms.crs is None:
            raise InputError(
                "the features have no CRS, so they cannot be placed on the raster; set one "
                "(gdf.set_crs(...), or features_crs= / --features-crs)"
            )
        cols: list[Column] = []
        patches = []
        for r in self.rasters:
            crs = r.source.grid.crs
            g = geoms if geoms.crs == crs else geoms.to_crs(crs)
            if not self._checked:
                _check_overlap(g, geoms.crs, r, strict)
            arr = np.asarray(g.values, dtype=object)
            if self.mode == "sample":
                _refuse_multipoints(arr)
                vals, nulls = _sample_points(arr, r.source)
                cols += [Column(name, vals[:, i], nulls.copy()) for i, name in enumerate(r.names)]
            elif self.mode == "zonal":
                stats = _zonal(arr, r.source, self.stats, self.all_touched)
                for i, name in enumerate(r.names):
                    for s in self.stats:
                        vals, nulls = stats[s]
                        cols.append(Column(f"{name}_{s}", vals[:, i], nulls.copy()))
            else:
                patches.append(_patches(arr, r.source, self.patch, self.fill_value))  # type: ignore[arg-type]
        self._checked = True
        if patches:
            vals = np.concatenate([p[0] for p in patches], axis=-1)
            nulls = np.logical_or.reduce([p[1] for p in patches])
            cols.append(Column("patch", vals, nulls))
        return cols

    def close(self) -> None:
        for r in self.rasters:
            r.source.close()


def _check_overlap(g: Any, features_crs: Any, raster: _Raster, strict: bool) -> None:
    present = g[~(g.isna() | g.is_empty)]
    if not len(present):
        return
    left, bottom, right, top = present.total_bounds
    rl, rb, rr, rt = raster.source.grid.bounds
    if left <= rr and right >= rl and bottom <= rt and top >= rb:
        return
    fmt = ", ".join(f"{v:.6g}" for v in (left, bottom, right, top))
    message = (
        f"none of the first {len(present)} features overlaps the raster of {raster.names} (features span ({fmt}) "
        f"in its CRS {raster.source.grid.crs}, reprojected from {features_crs}; the raster spans "
        f"({', '.join(f'{v:.6g}' for v in (rl, rb, rr, rt))})). The features' CRS is probably wrong: declare the "
        "right one (gdf.set_crs(..., allow_override=True); for a file, ogr2ogr -a_srs; --features-crs only for "
        "features that have none), or sample a raster that covers them"
    )
    if strict:
        raise InputError(message)
    warnings.warn(message, TilecastWarning, stacklevel=4)


def _refuse_multipoints(geoms: np.ndarray) -> None:
    """One pixel's value for a multipoint of several points would be its centroid's, a pixel under none of them."""
    import shapely

    several = np.flatnonzero((shapely.get_type_id(geoms) == 4) & (shapely.get_num_geometries(geoms) > 1))
    if several.size:
        raise InputError(
            f"{several.size} feature(s) are MultiPoints of several points (e.g. rows {several[:5].tolist()} of the "
            "batch), which have no single pixel; pass stats= (--stats mean,...) for statistics over the pixels under "
            "their points, or explode them into points first"
        )


def _points_xy(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y of each point (polygons: their centroid) and a mask of empty or missing geometries."""
    import shapely

    missing = np.array([g is None for g in geoms], dtype=bool)
    filled = np.where(missing, None, geoms)
    empty = missing | shapely.is_empty(filled)
    pts = shapely.centroid(np.where(empty, None, filled))
    x, y = shapely.get_x(pts), shapely.get_y(pts)
    return np.where(empty, np.nan, x), np.where(empty, np.nan, y), empty


def _rowcol(source: Source, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    inv = ~source.grid.transform
    with np.errstate(invalid="ignore"):
        col = np.floor(inv.a * x + inv.b * y + inv.c)
        row = np.floor(inv.d * x + inv.e * y + inv.f)
    h, w = source.grid.shape
    inside = np.isfinite(col) & np.isfinite(row) & (row >= 0) & (row < h) & (col >= 0) & (col < w)
    return np.where(inside, row, -1).astype(np.int64), np.where(inside, col, -1).astype(np.int64), inside


def _sample_points(geoms: np.ndarray, source: Source) -> tuple[np.ndarray, np.ndarray]:
    """``(N, C)`` values of the pixel under each point; null off the raster, on masked pixels, or empty."""
    x, y, _ = _points_xy(geoms)
    row, col, inside = _rowcol(source, x, y)
    n, c = len(geoms), len(source.band_names)
    values = np.full((n, c), np.nan)
    nulls = ~inside
    h, w = source.grid.shape
    blocks = (row // _BLOCK) * (math.ceil(w / _BLOCK)) + col // _BLOCK
    idx = np.flatnonzero(inside)
    order = idx[np.argsort(blocks[idx], kind="stable")]
    keys = blocks[order]
    if not len(keys):
        return values, nulls
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    for s, e in zip(starts, np.r_[starts[1:], len(keys)], strict=True):
        members = order[s:e]
        r0 = int(row[members[0]] // _BLOCK * _BLOCK)
        c0 = int(col[members[0]] // _BLOCK * _BLOCK)
        win = Window(c0, r0, min(_BLOCK, w - c0), min(_BLOCK, h - r0))
        data, valid = source.read(win)
        rr, cc = row[members] - r0, col[members] - c0
        values[members] = data[:, rr, cc].T
        if valid is not None:
            nulls[members] = ~valid[rr, cc]
    return values, nulls


def _zonal(
    geoms: np.ndarray, source: Source, stats: Sequence[str], all_touched: bool
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-band statistics over the pixels each polygon or line covers (pixel centre inside, or any pixel touched),
    or that a multipoint's points fall in (each pixel once).

    ``std`` is the population standard deviation (numpy's default). ``count`` is never null; the others are null
    where no valid pixel is covered.
    """
    import shapely

    n, c = len(geoms), len(source.band_names)
    out = {s: np.full((n, c), np.nan) for s in stats}
    nulls = np.ones(n, dtype=bool)
    points = np.array([g is not None and not g.is_empty and _is_point(g, shapely) for g in geoms], dtype=bool)
    if points.any():
        vals, pnull = _sample_points(geoms[points], source)
        pidx = np.flatnonzero(points)
        for s in stats:
            if s == "count":
                out[s][pidx] = np.where(pnull, 0, 1)[:, None]
            elif s == "std":
                out[s][pidx] = np.where(pnull[:, None], np.nan, 0.0)
            else:
                out[s][pidx] = vals
        nulls[pidx] = pnull
    for i in np.flatnonzero(~points):
        g = geoms[i]
        if "count" in stats:
            out["count"][i] = 0
        if g is None or g.is_empty:
            continue
        pixels = _region_pixels(g, source, all_touched, shapely)  # (C, k)
        if pixels is None:
            continue  # off the raster
        k = pixels.shape[1]
        if "count" in stats:
            out["count"][i] = k
        if not k:
            continue
        nulls[i] = False
        for s in stats:
            if s != "count":
                out[s][i] = _STAT_FUNCS[s](pixels, axis=1)
    return {s: (v, np.zeros(n, dtype=bool) if s == "count" else nulls) for s, v in out.items()}


def _is_point(g: Any, shapely: Any) -> bool:
    """A point, or a multipoint of one point: the pixel under it."""
    kind = shapely.get_type_id(g)
    return kind == 0 or (kind == 4 and shapely.get_num_geometries(g) == 1)


def _region_pixels(g: Any, source: Source, all_touched: bool, shapely: Any) -> np.ndarray | None:
    """The valid pixel values ``(C, k)`` the geometry covers, or None when its window misses the raster."""
    grid = source.grid
    left, bottom, right, top = g.bounds
    rx, ry = grid.resolution
    if right - left < rx or top - bottom < ry:  # a straight line or a multipoint in a row: a window around it
        left, bottom, right, top = left - rx, bottom - ry, right + rx, top + ry
    try:
        win = window_from_bounds((left, bottom, right, top), grid.transform, grid.shape)
    except RegionError:
        return None
    data, valid = source.read(win)
    transform = window_transform(win, grid.transform)
    shape = (int(win.height), int(win.width))
    if shapely.get_type_id(g) == 4:  # the pixel under each point, once
        row, col = _rowcol_xy(transform, shapely.get_coordinates(g))
        inside = np.zeros(shape, dtype=bool)
        ok = (row >= 0) & (row < shape[0]) & (col >= 0) & (col < shape[1])
        inside[row[ok], col[ok]] = True
    else:
        inside = geometry_mask([g], out_shape=shape, transform=transform, all_touched=all_touched, invert=True)
    if valid is not None:
        inside &= valid
    return data[:, inside].astype(np.float64)


def _rowcol_xy(transform: Any, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer row, col of the pixels under ``xy`` (``(k, 2)`` coordinates) in the grid of ``transform``."""
    inv = ~transform
    col = np.floor(inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c).astype(np.int64)
    row = np.floor(inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f).astype(np.int64)
    return row, col


_STAT_FUNCS = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max, "median": np.median}


def _patch_dtype(dtype: np.dtype, fill_value: float) -> np.dtype:
    """The raster's dtype, or a float one when it cannot hold ``fill_value`` (NaN, negative or fractional padding
    of an integer raster)."""
    if dtype.kind in "iu":
        fill, info = float(fill_value), np.iinfo(dtype)
        if not fill.is_integer() or not info.min <= fill <= info.max:
            return np.result_type(dtype, np.float32)
    return dtype


def _patches(geoms: np.ndarray, source: Source, size: XY, fill_value: float) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W, C)`` windows centred on each feature's pixel (polygons: centroid), padded beyond the raster."""
    x, y, _ = _points_xy(geoms)
    row, col, inside = _rowcol(source, x, y)
    h, w = source.grid.shape
    n, c = len(geoms), len(source.band_names)
    out = np.full((n, size.y, size.x, c), fill_value, dtype=_patch_dtype(np.dtype(source.dtype), fill_value))
    full = Window(0, 0, w, h)
    for i in np.flatnonzero(inside):
        want = Window(int(col[i]) - size.x // 2, int(row[i]) - size.y // 2, size.x, size.y)
        win = want.intersection(full)
        data, valid = source.read(win)
        if valid is not None:
            data = np.where(valid, data, fill_value)
        r0, c0 = int(win.row_off - want.row_off), int(win.col_off - want.col_off)
        out[i, r0:r0 + int(win.height), c0:c0 + int(win.width)] = np.moveaxis(data, 0, -1)
    return out, ~inside
