"""Where samples come from: label vectors (points or polygons) or a label raster, on the image's pixel grid.

Selection (all, random ``n``, or stratified ``per_class``) is seeded and streams: each candidate pixel gets a
random key and only the ``k`` smallest keys per class are kept, so a label raster with billions of labelled
pixels never needs more than ``k`` candidates per class in memory. Splits are spatially blocked: whole blocks of
``split_block`` pixels go to one split, and samples whose patch would reach into a block of another split are
dropped, so no pixel is shared between train and test.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rasterio.windows import Window

from .._extras import require
from ..errors import InputError, RegionError, TilecastWarning
from ..plan import XY
from ..sources.base import Grid
from .reading import patch_offset

__all__ = ["Samples", "assign_splits", "label_raster_samples", "select", "vector_samples"]


@dataclass
class Samples:
    """Sample pixels on the image grid, with their label and extra properties (one value per sample; a table export
    writes each property in its array's dtype)."""

    rows: np.ndarray
    cols: np.ndarray
    label: np.ndarray | None = None
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    split: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: np.ndarray) -> Samples:
        return Samples(
            self.rows[index], self.cols[index], None if self.label is None else self.label[index],
            {k: v[index] for k, v in self.properties.items()}, None if self.split is None else self.split[index],
        )


# ---- selection --------------------------------------------------------------------------------------------------


class _Reservoir:
    """Keeps the ``k`` candidates with the smallest random keys, per class (or overall): a seeded, streaming
    uniform sample without replacement."""

    def __init__(self, n: int | None, per_class: int | Mapping[Any, int] | None, seed: int) -> None:
        self.n, self.per_class = n, per_class
        self.rng = np.random.default_rng(seed)
        self.parts: list[Samples] = []
        self.keys: list[np.ndarray] = []
        self.pending = 0
        self.classes: set[Any] = set()
        """The label values seen, when ``per_class`` maps classes to counts: a key that matches none is reported."""

    def add(self, s: Samples) -> None:
        if not len(s):
            return
        if isinstance(self.per_class, Mapping) and s.label is not None:
            self.classes.update(np.unique(s.label).tolist())
        self.parts.append(s)
        self.keys.append(self.rng.random(len(s)))
        self.pending += len(s)
        if self.pending > 1_000_000 and (self.n or self.per_class):
            self._compact()

    def _limit(self, cls: Any) -> int | None:
        if isinstance(self.per_class, Mapping):
            return int(self.per_class.get(cls, self.per_class.get(str(cls), 0)))
        return self.per_class

    def _compact(self) -> None:
        s, k = _concat(self.parts), np.concatenate(self.keys)
        keep = self._select(s, k)
        self.parts, self.keys, self.pending = [s.take(keep)], [k[keep]], len(keep)

    def _select(self, s: Samples, keys: np.ndarray) -> np.ndarray:
        if self.per_class is not None:
            if s.label is None:
                raise InputError("per_class sampling needs labels; pass a label field or a label raster")
            out = []
            for cls in np.unique(s.label):
                idx = np.flatnonzero(s.label == cls)
                k = self._limit(cls.item() if isinstance(cls, np.generic) else cls)
                if k is None or k >= len(idx):
                    out.append(idx)
                elif k > 0:
                    out.append(idx[np.argpartition(keys[idx], k - 1)[:k]])
            keep = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        else:
            keep = np.arange(len(keys))
        if self.n is not None and self.n < len(keep):
            keep = keep[np.argpartition(keys[keep], self.n - 1)[: self.n]]
        return np.sort(keep)

    def result(self) -> Samples:
        if not self.parts:
            return Samples(np.zeros(0, np.int64), np.zeros(0, np.int64))
        s, k = _concat(self.parts), np.concatenate(self.keys)
        if self.n is None and self.per_class is None:
            return s
        return s.take(self._select(s, k))


def _concat(parts: Sequence[Samples]) -> Samples:
    if len(parts) == 1:
        return parts[0]
    label = None if parts[0].label is None else np.concatenate([p.label for p in parts])
    props = {k: np.concatenate([p.properties[k] for p in parts]) for k in parts[0].properties}
    return Samples(np.concatenate([p.rows for p in parts]), np.concatenate([p.cols for p in parts]), label, props)


def select(
    candidates: Iterator[Samples] | Samples,
    n: int | None = None,
    per_class: int | Mapping[Any, int] | None = None,
    seed: int = 0,
) -> Samples:
    """All candidates, a random ``n`` of them, or ``per_class`` of each class (then at most ``n`` overall)."""
    if n is not None and n <= 0:
        raise InputError(f"the number of samples must be > 0, got {n}")
    counts = per_class.values() if isinstance(per_class, Mapping) else [] if per_class is None else [per_class]
    if any(int(c) < 0 for c in counts):
        raise InputError(f"per_class counts must be >= 0, got {per_class}; give e.g. per_class=500 or {{1: 500}}")
    res = _Reservoir(n, per_class, seed)
    for part in [candidates] if isinstance(candidates, Samples) else candidates:
        res.add(part)
    if isinstance(per_class, Mapping):
        _warn_unknown_classes(per_class, res.classes)
    return res.result()


def _warn_unknown_classes(per_class: Mapping[Any, int], classes: set[Any]) -> None:
    """A ``per_class`` key that no label has (a typo, or ``"1"`` for the label 1.0) would be silently unused."""
    unknown = [k for k in per_class if not any(k == c or k == str(c) for c in classes)]
    if unknown and classes:
        shown = sorted(classes)
        listed = ", ".join(f"{c:g}" if isinstance(c, float) else str(c) for c in shown[:20])
        more = ", ..." if len(shown) > 20 else ""
        warnings.warn(
            f"per_class names {unknown}, which no label has (the labels are {listed}{more}); their counts were not "
            "used: name classes by their label values, e.g. per_class={1: 500} (--per-class 1=500)",
            TilecastWarning, stacklevel=4,
        )


# ---- label sources ----------------------------------------------------------------------------------------------


def _read_vector(labels: Any) -> Any:
    gpd = require("geopandas", "features")
    if isinstance(labels, (str, os.PathLike)):
        if not os.path.exists(labels) and "://" not in str(labels):
            raise InputError(f"label file not found: {labels}; check the path")
        try:
            return gpd.read_file(labels, engine="pyogrio")
        except Exception as exc:
            raise InputError(f"cannot read labels from {labels}: {exc}") from None
    if isinstance(labels, gpd.GeoDataFrame):
        return labels
    raise InputError(f"labels must be a vector file path or a GeoDataFrame, got {type(labels).__name__}")


def _label_values(series: Any, what: str = "label field") -> np.ndarray:
    values = series.to_numpy()
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    raise InputError(
        f"the {what} {series.name!r} holds {values.dtype} values, not numbers; Earth Engine exports numbers "
        "only, so map class names to numeric ids first (e.g. a 'class_id' column)"
    )


def vector_samples(
    labels: Any,
    grid: Grid,
    label_field: str | None = None,
    properties: Sequence[str] = (),
    drop_outside: bool = False,
) -> Iterator[Samples]:
    """Candidates from points (one pixel each) or polygons (every pixel whose centre is inside), reprojected to the
    image's CRS when they differ."""
    gdf = _read_vector(labels)
    missing = [f for f in ([label_field] if label_field else []) + list(properties) if f not in gdf.columns]
    if missing:
        fields = [c for c in gdf.columns if c != gdf.geometry.name]
        raise InputError(f"the label file has no field {missing[0]!r}; its fields are {fields}")
    if len(gdf) == 0:
        raise InputError("the label file has no features; pass a file with at least one labelled geometry")
    if gdf.crs is None:
        raise InputError("the labels have no CRS; set one (e.g. gdf.set_crs('EPSG:4326')) so they can be placed")
    if not gdf.crs.equals(grid.crs):
        try:
            gdf = gdf.to_crs(grid.crs)
        except Exception as exc:
            raise InputError(
                f"cannot reproject the labels from {gdf.crs} to the image's CRS {grid.crs}: {exc}; "
                "reproject them first"
            ) from None
    usable = (~gdf.geometry.is_empty & gdf.geometry.notna()).to_numpy()
    if label_field:  # a sample without a label would go to training as label NaN
        unlabelled = gdf[label_field].isna().to_numpy()
        if unlabelled.any():
            warnings.warn(f"{int(unlabelled.sum())} of {len(gdf)} labels have no {label_field!r} value (null) and "
                          "were skipped", TilecastWarning, stacklevel=3)
            usable = usable & ~unlabelled  # not in place: pandas 3 hands out read-only arrays
    if not usable.all():  # copy only when needed: a million points take hundreds of MiB
        gdf = gdf[usable]
    label = _label_values(gdf[label_field]) if label_field else None
    props = {p: _label_values(gdf[p], "property") for p in properties}
    inv = ~grid.transform
    h, w = grid.shape
    kinds = set(gdf.geom_type)
    points = gdf.geom_type.isin(["Point"]).to_numpy()
    if points.any():
        xs, ys = gdf.geometry[points].x.to_numpy(), gdf.geometry[points].y.to_numpy()
        cf, rf = inv * (xs, ys)
        rows, cols = np.floor(rf).astype(np.int64), np.floor(cf).astype(np.int64)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        if not inside.all():
            n_out = int((~inside).sum())
            if not inside.any():
                raise RegionError(
                    f"all {n_out} label points lie outside the raster {grid.bounds}; check that the labels and "
                    "the image cover the same area"
                )
            if not drop_outside:
                raise RegionError(
                    f"{n_out} of {len(inside)} label points lie outside the raster; pass drop_outside=True "
                    "(--drop-outside) to skip them, or clip the labels to the image"
                )
            warnings.warn(f"{n_out} label points outside the raster were skipped", TilecastWarning, stacklevel=3)
        yield Samples(
            rows[inside], cols[inside], None if label is None else label[points][inside],
            {k: v[points][inside] for k, v in props.items()},
        )
    polys = ~points
    if polys.any():
        if not kinds & {"Polygon", "MultiPolygon"}:
            raise InputError(f"labels must be points or polygons, got {sorted(kinds)}; split multi-part points into "
                             "points (gdf.explode(index_parts=False); ogr2ogr -explodecollections), or buffer lines "
                             "into polygons")
        yield from _polygon_pixels(gdf[polys], grid, None if label is None else label[polys],
                                   {k: v[polys] for k, v in props.items()})


def _polygon_pixels(gdf: Any, grid: Grid, label: np.ndarray | None, props: dict) -> Iterator[Samples]:
    from rasterio.features import geometry_window, rasterize
    from rasterio.windows import transform as window_transform

    h, w = grid.shape
    full = Window(0, 0, w, h)
    any_inside = False
    empty = 0
    for i, geom in enumerate(gdf.geometry):
        empty += 1  # until it gives a pixel
        try:
            win = geometry_window(_Shim(grid), [geom]).intersection(full)
        except Exception:
            continue
        win = Window(int(win.col_off), int(win.row_off), int(win.width), int(win.height))
        if win.width <= 0 or win.height <= 0:
            continue
        mask = rasterize([(geom, 1)], out_shape=(win.height, win.width),
                         transform=window_transform(win, grid.transform), fill=0, dtype="uint8").astype(bool)
        r, c = np.nonzero(mask)
        if not len(r):
            continue
        any_inside = True
        empty -= 1
        n = len(r)
        yield Samples(
            r + win.row_off, c + win.col_off, None if label is None else np.full(n, label[i]),
            {k: np.full(n, v[i]) for k, v in props.items()},
        )
    if not any_inside:
        raise RegionError("no label polygon covers a pixel centre of the raster; check that the labels overlap it")
    if empty:  # as for points outside the raster: labels that give no sample are not lost without a word
        warnings.warn(f"{empty} of {len(gdf)} label polygons cover no pixel centre of the raster (outside it, or "
                      "smaller than a pixel) and gave no samples", TilecastWarning, stacklevel=3)


class _Shim:
    """The two attributes rasterio's ``geometry_window`` reads from a dataset."""

    def __init__(self, grid: Grid) -> None:
        self.transform = grid.transform
        self.height, self.width = grid.shape


def label_raster_samples(path: Any, grid: Grid, rows_per_read: int = 512) -> Iterator[Samples]:
    """Every valid pixel of a label raster (its first band), warped to the image grid (nearest) if needed."""
    from rasterio.enums import Resampling

    from ..sources import RasterioSource

    src = RasterioSource(path, [1])
    try:
        if src.native != grid:
            src.close()
            src = RasterioSource(path, [1], warp=(grid, Resampling.nearest))
        h, w = grid.shape
        for r0 in range(0, h, rows_per_read):
            n = min(rows_per_read, h - r0)
            data, valid = src.read(Window(0, r0, w, n))
            band = data[0]
            ok = np.ones(band.shape, bool) if valid is None else valid.copy()
            if band.dtype.kind == "f":
                ok &= np.isfinite(band)
            r, c = np.nonzero(ok)
            yield Samples(r + r0, c, band[r, c].astype(np.float64))
    finally:
        src.close()


# ---- splits -----------------------------------------------------------------------------------------------------


def assign_splits(
    samples: Samples,
    fractions: Mapping[str, float],
    block: int,
    seed: int = 0,
    patch: XY = XY(1, 1),  # noqa: B008 - an immutable tuple
    stratify: bool = False,
    shape: tuple[int, int] | None = None,
) -> Samples:
    """Give each ``block x block`` pixel block to one split and drop samples whose patch reaches into a block of
    another split. Pixels beyond the raster (``shape``, rows and columns) are padding, nobody's: a patch reaching
    past the edge is not dropped for a block that does not exist.

    By default a block's split is a seeded hash of its position, in proportion to ``fractions`` (independent of what
    is sampled). ``stratify=True`` instead deals the labelled blocks out greedily (largest first, ties seeded) so that
    each class is split close to ``fractions``: with few, clustered labels a random draw can leave a class out of a
    split. Blocks without samples keep the hashed split.
    """
    if block <= 0:
        raise InputError(f"split_block must be > 0 pixels, got {block}")
    names = list(fractions)
    weights = np.array([float(fractions[k]) for k in names])
    if (weights < 0).any() or weights.sum() <= 0:
        raise InputError(f"split fractions must be >= 0 and not all 0, got {dict(fractions)}")
    if patch.x > block or patch.y > block:
        raise InputError(f"split_block ({block}) must be at least the patch size {tuple(patch)}")
    weights = weights / weights.sum()
    cum = np.cumsum(weights)
    ncols = int(samples.cols.max(initial=0)) // block + 2

    def block_id(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (r // block) * ncols + c // block

    def hashed(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        u = _hash_uniform(r // block, c // block, seed)
        return np.minimum(np.searchsorted(cum, u, side="right"), len(names) - 1)

    known_ids = np.zeros(0, dtype=np.int64)
    known_split = np.zeros(0, dtype=np.int64)
    if stratify:
        if samples.label is None:
            raise InputError("stratified splits need labels")
        ids = block_id(samples.rows, samples.cols)
        known_ids, inv = np.unique(ids, return_inverse=True)
        _, cls = np.unique(samples.label, return_inverse=True)
        hist = np.zeros((len(known_ids), cls.max() + 1))
        np.add.at(hist, (inv, cls), 1)
        target = weights[:, None] * hist.sum(axis=0)[None, :]
        current = np.zeros_like(target)
        tie = np.random.default_rng(seed).random(len(known_ids))
        known_split = np.zeros(len(known_ids), dtype=np.int64)
        for b in np.lexsort((tie, -hist.sum(axis=1))):
            need = (target - current) / np.maximum(target, 1)
            k = int(np.argmax(need @ hist[b] + 1e-9 * weights))
            known_split[b] = k
            current[k] += hist[b]

    def split_of(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        out = hashed(r, c)
        if len(known_ids):
            ids = block_id(r, c)
            pos = np.clip(np.searchsorted(known_ids, ids), 0, len(known_ids) - 1)
            hit = known_ids[pos] == ids
            out[hit] = known_split[pos[hit]]
        return out

    off = patch_offset(patch)
    r0, c0 = samples.rows - off.y, samples.cols - off.x
    r1, c1 = r0 + patch.y - 1, c0 + patch.x - 1
    if shape is not None:  # pixels below/right of the raster are nobody's either
        r1, c1 = np.minimum(r1, shape[0] - 1), np.minimum(c1, shape[1] - 1)
    s = split_of(samples.rows, samples.cols)
    same = np.ones(len(s), bool)
    for rr, cc in ((r0, c0), (r0, c1), (r1, c0), (r1, c1)):  # pixels above/left of the raster are nobody's
        same &= split_of(np.maximum(rr, 0), np.maximum(cc, 0)) == s
    kept = samples.take(np.flatnonzero(same))
    kept.split = np.asarray(names, dtype=object)[s[same]]
    return kept


def _hash_uniform(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per (a, b), from a 64-bit mix (splitmix64): reproducible and order-free."""
    with np.errstate(over="ignore"):
        x = (a.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ (b.astype(np.uint64) + np.uint64(seed + 1)
                                                                     * np.uint64(0xBF58476D1CE4E5B9))
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
