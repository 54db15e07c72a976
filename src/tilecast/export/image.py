"""Image export as TFRecord patches (Earth Engine's ``Export.image`` with ``fileFormat='TFRecord'``).

The region is cut into ``patchDimensions`` tiles by the core :class:`~tilecast.plan.TilePlan`, each buffered by
``kernelSize`` (a *total* margin, half per side, so it maps to the plan's ``overlap_mode="total"``). Edge tiles that
the patch does not fill are dropped, as Earth Engine does, by planning over the region truncated to whole patches.
Patches are written row-major across shards whose names sort in the same order, with the mixer JSON beside them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.windows import Window

from ..errors import InputError, OutputExistsError, RegionError, SpecError
from ..plan import XY, TileGeometry, TilePlan, cover_window, window_from_bounds, xy
from ..sources import open_source, parse_crs
from ..sources.base import Grid, Source, band_dtypes
from .common import ExportResult, remove_stale, shard_files
from .reading import default_for
from .specfile import make_spec, write_spec
from .tfrecord import ShardedWriter, example_bytes, sequence_example_bytes

__all__ = [
    "ImageExportOptions", "ImagePlan", "bounds_in_crs_of", "finish_image", "image_region", "margin_of",
    "patch_records", "plan_image", "shard_files", "truncated_region", "write_image",
]

GiB = 1 << 30

# Earth Engine's formatOptions keys (also accepted with a 'tfrecord' prefix) -> our field names.
_EE_KEYS = {
    "patchDimensions": "patch_dimensions",
    "kernelSize": "kernel_size",
    "compressed": "compressed",
    "maxFileSize": "max_file_size",
    "defaultValue": "default_value",
    "tensorDepths": "tensor_depths",
    "collapseBands": "collapse_bands",
    "maskedThreshold": "masked_threshold",
    "sequenceData": "sequence_data",
}


@dataclass(frozen=True)
class ImageExportOptions:
    """Earth Engine's TFRecord ``formatOptions``, plus ``arrays``: which raster bands form an array band (a raster
    has no array bands of its own), e.g. ``{"spectral": ["b1", "b2", "b3"]}``."""

    patch_dimensions: XY
    kernel_size: XY = XY(1, 1)  # noqa: RUF009 - an immutable tuple
    compressed: bool = True
    max_file_size: int = GiB
    default_value: float = 0.0
    tensor_depths: Mapping[str, int] = field(default_factory=dict)
    collapse_bands: bool = False
    masked_threshold: float = 1.0
    sequence_data: bool = False
    arrays: Mapping[str, Sequence[str]] = field(default_factory=dict)

    @classmethod
    def create(cls, patch_dimensions: int | Sequence[int], **kwargs: Any) -> ImageExportOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise SpecError(f"Unknown file format options: {unknown}; known options are {sorted(known)}")
        kw = dict(kwargs)
        patch = xy(patch_dimensions, "patchDimensions")
        if min(patch) <= 0:
            raise SpecError(f"patchDimensions must be > 0, got {list(patch)}")
        if "kernel_size" in kw:
            kw["kernel_size"] = xy(kw["kernel_size"], "kernelSize")
        depths = kw.get("tensor_depths", {})
        if not isinstance(depths, Mapping):
            raise SpecError(f"tensorDepths must be a dict {{band: depth}}, got {type(depths).__name__}")
        thr = float(kw.get("masked_threshold", 1.0))
        if not 0.0 <= thr <= 1.0:
            raise SpecError(f"maskedThreshold must be between 0 and 1, got {thr}")
        if kw.get("max_file_size") is not None and int(kw["max_file_size"]) <= 0:
            raise SpecError(f"maxFileSize must be > 0 bytes, got {kw['max_file_size']}")
        opts = cls(patch, **kw)
        margin_of(opts.kernel_size)
        for name in opts.arrays:
            if name not in opts.tensor_depths:
                raise SpecError(
                    f"the array band {name!r} has no depth; tensorDepths is required for every array band, "
                    f"e.g. tensor_depths={{{name!r}: {len(opts.arrays[name])}}}"
                )
        for name, depth in opts.tensor_depths.items():
            if name not in opts.arrays:
                raise SpecError(f"tensorDepths names {name!r}, which is not an array band (declare it in arrays)")
            if int(depth) <= 0:
                raise SpecError(f"tensorDepths[{name!r}] must be > 0, got {depth}")
        return opts

    @classmethod
    def from_format_options(cls, options: Mapping[str, Any]) -> ImageExportOptions:
        """Earth Engine's ``formatOptions`` dict (camelCase keys, optionally ``tfrecord``-prefixed)."""
        kw: dict[str, Any] = {}
        for key, value in options.items():
            k = key[len("tfrecord"):] if key.startswith("tfrecord") else key
            k = k[:1].lower() + k[1:]
            if k not in _EE_KEYS:
                raise SpecError(f"Unknown file format options: {key!r}; known: {sorted(_EE_KEYS)}")
            kw[_EE_KEYS[k]] = value
        if "patch_dimensions" not in kw:
            raise SpecError("patchDimensions is required for a TFRecord image export")
        return cls.create(kw.pop("patch_dimensions"), **kw)


def margin_of(kernel: XY) -> XY:
    """The total margin of ``kernelSize``: a 1-pixel kernel (the default) needs none; others are split evenly."""
    m = XY(0 if kernel.x <= 1 else kernel.x, 0 if kernel.y <= 1 else kernel.y)
    if m.x % 2 or m.y % 2 or min(kernel) < 0:
        raise SpecError(
            f"kernelSize {list(kernel)} is a total margin split between both sides, so it must be even (or 1); "
            f"use {[m.x + m.x % 2, m.y + m.y % 2]}"
        )
    return m


def truncated_region(region: Window, patch: XY) -> Window:
    """The region cut down to whole patches: Earth Engine drops the border tiles along the greatest x/y edges."""
    w = (int(region.width) // patch.x) * patch.x
    h = (int(region.height) // patch.y) * patch.y
    if w == 0 or h == 0:
        raise RegionError(
            f"the patch of {patch.x} x {patch.y} pixels is larger than the region "
            f"({int(region.width)} x {int(region.height)}); use a smaller patch or a larger region"
        )
    return Window(int(region.col_off), int(region.row_off), w, h)


def mixer_dict(crs: Any, transform: Any, region: Window, patch: XY, per_row: int, total: int) -> dict[str, Any]:
    """Earth Engine's mixer: the unbuffered patch grid's projection and GDAL-order affine, and the patch counts."""
    t = transform * transform.translation(region.col_off, region.row_off)
    epsg = crs.to_epsg()
    return {
        "projection": {
            "crs": f"EPSG:{epsg}" if epsg else crs.to_wkt(),
            "affine": {"doubleMatrix": [t.a, t.b, t.c, t.d, t.e, t.f]},
        },
        "patchDimensions": [patch.x, patch.y],
        "patchesPerRow": per_row,
        "totalPatches": total,
    }


def _band_groups(names: list[str], opts: ImageExportOptions) -> list[tuple[str, list[int], int]]:
    """``(feature name, band positions, depth or 0 for a scalar band)`` in band order."""
    in_array: dict[str, str] = {}
    for arr, members in opts.arrays.items():
        for m in members:
            if m not in names:
                raise InputError(f"array band {arr!r} lists {m!r}, which is not a band; bands are {names}")
            in_array[m] = arr
    groups, seen = [], set()
    for i, n in enumerate(names):
        arr = in_array.get(n)
        if arr is None:
            groups.append((n, [i], 0))
        elif arr not in seen:
            seen.add(arr)
            groups.append((arr, [names.index(m) for m in opts.arrays[arr]], int(opts.tensor_depths[arr])))
    features = [g[0] for g in groups]
    twice = sorted({f for f in features if features.count(f) > 1})
    if twice:  # one feature per name: the second would silently replace the first
        raise InputError(f"the feature name(s) {twice} are given to more than one band or array; list each band "
                         "once (--bands) and name each array (--array NAME=...) after none of the other bands")
    return groups


@dataclass(frozen=True)
class ImagePlan:
    """What one image export writes, decided before any pixel is read: small and picklable, so an engine can run it
    anywhere (:func:`write_image` here, :func:`tilecast.export.dask.write_image_dask` on Dask)."""

    plan: TilePlan
    """The patches, row-major, with the kernel margin as the plan's ``total`` overlap."""
    grid: Grid
    """The source's grid: the mixer's projection and affine come from it."""
    region: Window
    margin: XY
    prefix: str
    groups: list
    """``(feature name, band positions, depth or 0 for a scalar band)`` in band order."""
    fills: np.ndarray
    ph: int
    pw: int
    folder: Path
    opts: ImageExportOptions

    @property
    def mixer_path(self) -> Path:
        return self.folder / f"{self.prefix}-mixer.json"

    @property
    def spec_path(self) -> Path:
        return self.folder / f"{self.prefix}.spec.json"


def plan_image(source: Source, folder: Path, opts: ImageExportOptions, prefix: str | None, region: Window,
               overwrite: bool) -> ImagePlan:
    """The export of ``region`` of ``source`` into ``folder``; refuses to replace an earlier export unless
    ``overwrite``."""
    grid = source.grid
    region = truncated_region(region, opts.patch_dimensions)
    margin = margin_of(opts.kernel_size)
    plan = TilePlan.create(grid.shape, TileGeometry.create(opts.patch_dimensions, margin, overlap_mode="total"),
                           region)
    names = list(source.band_names)
    groups = _band_groups(names, opts)
    fills = np.array([default_for(d, opts.default_value) for d in band_dtypes(source)], dtype=np.float64)
    ph, pw = opts.patch_dimensions.y + margin.y, opts.patch_dimensions.x + margin.x
    p = ImagePlan(plan, grid, region, margin, prefix or "image", groups, fills, ph, pw, folder, opts)
    for path in (p.mixer_path, p.spec_path):
        if path.exists() and not overwrite:
            raise OutputExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace the export")
    shards = shard_files(folder, p.prefix)
    if shards and not overwrite:
        raise OutputExistsError(f"{shards[0]} already exists; pass overwrite=True (--overwrite) to replace the export")
    return p


def bounds_in_crs_of(image: Any, bounds: Sequence[float], crs: Any, bands: Sequence[str | int] | None = None
                     ) -> tuple[float, float, float, float]:
    """``bounds`` given in ``crs`` (``--bounds-crs``), as the envelope in ``image``'s CRS that the export takes."""
    from rasterio.warp import transform_bounds

    given = parse_crs(crs)
    source = open_source(image, bands)
    try:
        own = source.grid.crs
    finally:
        source.close()
    if given == own:
        return tuple(bounds)  # type: ignore[return-value]
    return transform_bounds(given, own, *bounds, densify_pts=21)


def image_region(grid: Grid, bounds: Sequence[float] | None, window: Window | None) -> Window:
    """The window to export: ``bounds`` (in the image's CRS), else ``window``, else the whole image."""
    if bounds is not None and window is not None:
        raise InputError("give bounds or window, not both")
    if bounds is not None:
        return window_from_bounds(bounds, grid.transform, grid.shape)
    if window is not None:
        return cover_window(window)  # a fractional window (from_bounds) takes every pixel it touches
    h, w = grid.shape
    return Window(0, 0, w, h)


def patch_records(source: Source, tile: Any, p: ImagePlan) -> list[bytes] | None:
    """The records of one patch, or None when ``maskedThreshold`` drops it."""
    nb = len(p.fills)
    block = np.empty((nb, p.ph, p.pw), dtype=np.float64)
    block[:] = p.fills[:, None, None]
    valid = np.zeros((p.ph, p.pw), dtype=bool)
    (top, _), (left, _) = tile.pad
    rd = tile.read
    if rd.width > 0 and rd.height > 0:
        data, mask = source.read(rd)
        inner = (slice(top, top + rd.height), slice(left, left + rd.width))
        block[(slice(None), *inner)] = data
        valid[inner] = True if mask is None else mask
    if not valid.all():
        block[:, ~valid] = np.broadcast_to(p.fills[:, None], (nb, int((~valid).sum())))
    if p.opts.masked_threshold < 1.0 and (~valid).mean() > p.opts.masked_threshold:
        return None
    return list(_records(block.astype(np.float32), p.groups, p.opts, p.fills))


def finish_image(p: ImagePlan, files: list[Path], written: int, skipped: int) -> ExportResult:
    """The mixer (only when no patch can be dropped) and the spec, once every shard is in place."""
    opts = p.opts
    mixer = None
    if opts.masked_threshold == 1.0:
        mixer = p.mixer_path
        write_spec(mixer, mixer_dict(p.grid.crs, p.grid.transform, p.region, opts.patch_dimensions,
                                     p.plan.tile_cols, len(p.plan)))
    elif p.mixer_path.exists():  # overwrite=True: a stale mixer would describe patches that are no longer there
        p.mixer_path.unlink()
    write_spec(p.spec_path, _spec(p.groups, opts, p.ph, p.pw, files, p.folder, written, mixer, p.margin))
    return ExportResult({"all": files}, written, {"all": written}, p.spec_path, mixer, skipped)


def write_image(source: Source, p: ImagePlan, progress: Callable | None, overwrite: bool) -> ExportResult:
    """Run the export on this machine: patches row-major into ``{prefix}-NNNNN`` shards."""
    opts = p.opts
    writer = ShardedWriter(p.folder, p.prefix, opts.compressed, opts.max_file_size, None, overwrite)
    written = skipped = 0
    try:
        for k, tile in enumerate(p.plan.tiles()):
            records = patch_records(source, tile, p)
            if records is None:
                skipped += 1
            else:
                for rec in records:
                    writer.write(rec)
                written += 1
            if progress:
                progress(k + 1, len(p.plan), (k + 1) * p.ph * p.pw)
        files = writer.close()
    except BaseException:
        writer.abort()
        raise
    remove_stale(shard_files(p.folder, p.prefix), files)  # overwrite=True: an earlier Dask export's shards
    return finish_image(p, files, written, skipped)


def _features(block: np.ndarray, groups: list[tuple[str, list[int], int]], fills: np.ndarray) -> dict[str, Any]:
    """``{feature: (H, W) or (H, W, D)}``; arrays truncated or padded with the default value to their depth."""
    out: dict[str, Any] = {}
    for name, idx, depth in groups:
        if depth == 0:
            out[name] = block[idx[0]]
        else:
            arr = np.moveaxis(block[idx[:depth]], 0, -1)
            if arr.shape[-1] < depth:
                pad = np.full((*arr.shape[:2], depth - arr.shape[-1]), fills[idx[0]], dtype=arr.dtype)
                arr = np.concatenate([arr, pad], axis=-1)
            out[name] = arr
    return out


def _records(block: np.ndarray, groups: list, opts: ImageExportOptions, fills: np.ndarray):
    feats = _features(block, groups, fills)
    if opts.collapse_bands:
        stacked = np.concatenate([v[..., None] if v.ndim == 2 else v for v in feats.values()], axis=-1)
        feats = {groups[0][0]: stacked}
    if not opts.sequence_data:
        yield example_bytes(feats)
        return
    # One SequenceExample per pixel, row-major: scalar bands -> context, array bands -> feature lists.
    h, w = block.shape[1:]
    for r in range(h):
        for c in range(w):
            ctx = {k: float(v[r, c]) for k, v in feats.items() if v.ndim == 2}
            seq = {k: v[r, c] for k, v in feats.items() if v.ndim == 3}
            yield sequence_example_bytes(ctx, seq)


def _spec(groups: list, opts: ImageExportOptions, ph: int, pw: int, files: list[Path], folder: Path, count: int,
          mixer: Path | None, margin: XY) -> dict[str, Any]:
    shapes = {name: ([ph, pw] if depth == 0 else [ph, pw, depth]) for name, _, depth in groups}
    if opts.collapse_bands:
        total = sum(depth or 1 for _, _, depth in groups)
        shapes = {groups[0][0]: [ph, pw, total]}
    extra = {
        "patch": list(opts.patch_dimensions), "kernel": list(opts.kernel_size), "margin": list(margin),
        "mixer": mixer.name if mixer else None, "count": count, "default_value": opts.default_value,
        "collapse_bands": opts.collapse_bands, "sequence_data": opts.sequence_data,
        "tensor_depths": dict(opts.tensor_depths), "arrays": {k: list(v) for k, v in opts.arrays.items()},
    }
    rel = [os.path.relpath(f, folder) for f in files]
    if opts.sequence_data:
        ctx = {k: [] for k, v in shapes.items() if len(v) == 2}
        seq = {k: [] for k, v in shapes.items() if len(v) == 3}
        extra["pixels_per_patch"] = ph * pw
        return make_spec(ctx, rel, opts.compressed, "sequence_example", seq, **extra)
    return make_spec(shapes, rel, opts.compressed, **extra)

