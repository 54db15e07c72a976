"""Polygons from a class map while its strips stream, with the seams between strips dissolved.

Each strip of full-width rows is polygonized with GDAL's algorithm (``rasterio.features.shapes``, 4-connected) in
grid pixel coordinates, where every vertex is a whole number and unions are exact. A polygon that reaches the
strip's bottom row is *open*: the region may go on below. When the next strip arrives, open polygons and the new
polygons of the same class that share a stretch of the seam (not just a corner, as 4-connectivity says) are
unioned; what no longer reaches the bottom is final. So a region that crosses ten tiles comes out as one valid
polygon, while memory holds only the polygons that touch the current seam.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

__all__ = ["ClassPolygons", "GridPolygonizer", "StripPolygonizer", "block_polygons", "canonical", "join_across"]

_SHAPES_DTYPES = ("int16", "int32", "uint8", "uint16", "float32")


@dataclass
class ClassPolygons:
    """Polygons in grid pixel coordinates (``x`` = column, ``y`` = row) and the class value of each."""

    geoms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    @classmethod
    def concat(cls, parts: Iterable[ClassPolygons]) -> ClassPolygons:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.empty(0, object), np.zeros(0, np.int64))
        return cls(np.concatenate([p.geoms for p in parts]), np.concatenate([p.values for p in parts]))


def block_polygons(row_off: int, col_off: int, data: np.ndarray, valid: np.ndarray | None,
                   ignore: list[float]) -> ClassPolygons:
    """GDAL's 4-connected polygons of one block of a class map, in grid pixel coordinates."""
    import shapely
    from affine import Affine
    from rasterio.features import shapes

    mask = np.ones(data.shape, bool) if valid is None else valid.copy()
    for v in ignore:  # on the values themselves: a cast would turn uint32 nodata 2**32 - 1 into the region -1
        mask &= ~(np.isnan(data) if isinstance(v, float) and np.isnan(v) else data == v)
    if not mask.any():
        return ClassPolygons.concat([])
    table = None
    if data.dtype.name not in _SHAPES_DTYPES:  # GDAL takes no (u)int64 or uint32: polygonize codes of the values
        table, codes = np.unique(data, return_inverse=True)
        data = codes.reshape(data.shape).astype(np.int32)
    geoms, values = [], []
    for geom, value in shapes(data, mask=mask, connectivity=4, transform=Affine.translation(col_off, row_off)):
        rings = geom["coordinates"]
        geoms.append(shapely.Polygon(rings[0], rings[1:]))
        values.append(value)
    out = np.asarray(values) if table is None else table[np.asarray(values, dtype=np.int64)]
    return canonical(ClassPolygons(np.asarray(geoms, dtype=object), out))


def canonical(polys: ClassPolygons) -> ClassPolygons:
    """Each polygon in one form whatever seams it was joined across: no vertex in the middle of a straight edge
    (a union leaves one where a seam crossed), rings normalized. So both engines, and any strip or chunk size,
    write the same vertices, and neighbours held open meet a final region with the same vertices on both sides
    (which :mod:`~tilecast.vectors.coverage` needs)."""
    import shapely

    if not len(polys):
        return polys
    rings, owner = shapely.get_rings(polys.geoms, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    open_ = np.r_[ring[1:] == ring[:-1], False]  # drop each ring's closing point
    xy, ring = xy[open_], ring[open_]
    n = len(ring)
    start = np.flatnonzero(np.r_[True, ring[1:] != ring[:-1]])
    end = np.r_[start[1:], n] - 1
    prev, nxt = np.arange(n) - 1, np.arange(n) + 1
    prev[start], nxt[end] = end, start
    d1, d2 = xy - xy[prev], xy[nxt] - xy
    turn = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0] != 0  # pixel corners: exact
    rings = shapely.linearrings(xy[turn], indices=ring[turn])
    return ClassPolygons(shapely.normalize(shapely.polygons(rings, indices=owner)), polys.values)


def join_across(old: ClassPolygons, geoms: np.ndarray,
                values: np.ndarray) -> tuple[ClassPolygons, ClassPolygons, ClassPolygons]:
    """Union held polygons with new ones of the same class that share a stretch of a seam (not just a corner, as
    4-connectivity says): (joined, old unmatched, new unmatched)."""
    import shapely

    empty = ClassPolygons.concat([])
    if not len(old) or not len(geoms):
        return empty, old, ClassPolygons(geoms, values)
    tree = shapely.STRtree(geoms)
    i, j = tree.query(old.geoms, predicate="intersects")
    same = old.values[i] == values[j]
    i, j = i[same], j[same]
    shared = shapely.length(shapely.intersection(old.geoms[i], geoms[j])) > 0
    i, j = i[shared], j[shared]
    n_old = len(old)
    parent = np.arange(n_old + len(geoms))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    for a, b in zip(i.tolist(), (j + n_old).tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for k in sorted(set(i.tolist()) | set((j + n_old).tolist())):
        groups.setdefault(find(k), []).append(k)
    everything = np.concatenate([old.geoms, geoms])
    all_values = np.concatenate([old.values, values])
    merged = [shapely.union_all(everything[g]) for g in groups.values()]
    merged_values = [all_values[g[0]] for g in groups.values()]
    used = np.zeros(len(parent), bool)
    used[[k for g in groups.values() for k in g]] = True
    joined = canonical(ClassPolygons(np.asarray(merged, dtype=object), np.asarray(merged_values)))
    return (joined, ClassPolygons(old.geoms[~used[:n_old]], old.values[~used[:n_old]]),
            ClassPolygons(geoms[~used[n_old:]], values[~used[n_old:]]))


class StripPolygonizer:
    """Feed it strips of a class map top to bottom with :meth:`add`; each call returns the polygons that are final,
    and :meth:`finish` the rest. ``ignore``: values that are not regions (nodata, a background class)."""

    def __init__(self, ignore: Iterable[float] = ()) -> None:
        self.ignore = [v for v in ignore if v is not None]
        self.open = ClassPolygons.concat([])
        self.bottom = 0
        self.peak_open = 0
        """The most polygons held at once, for tests and benchmarks."""

    def add(self, row_off: int, data: np.ndarray, valid: np.ndarray | None = None) -> ClassPolygons:
        """Take rows ``[row_off, row_off + len(data))`` of a 2-D class map; ``valid`` masks pixels out."""
        import shapely

        if row_off != self.bottom:
            from ..errors import InputError

            raise InputError(f"strips must come in order: expected row {self.bottom}, got {row_off}")
        new = block_polygons(row_off, 0, data, valid, self.ignore)
        self.bottom = row_off + data.shape[0]
        top = shapely.bounds(new.geoms)[:, 1] <= row_off if len(new) else np.zeros(0, bool)
        old, self.open = self.open, ClassPolygons.concat([])
        joined, rest_old, rest_new = join_across(old, new.geoms[top], new.values[top])
        candidates = ClassPolygons.concat([joined, ClassPolygons(new.geoms[~top], new.values[~top])])
        out = self._keep_open(candidates)
        return ClassPolygons.concat([rest_old, out, self._keep_open(rest_new)])

    def _keep_open(self, polys: ClassPolygons) -> ClassPolygons:
        """Hold the polygons that reach the current bottom; return the others."""
        import shapely

        if not len(polys):
            return polys
        at_bottom = shapely.bounds(polys.geoms)[:, 3] >= self.bottom
        self.open = ClassPolygons.concat([self.open, ClassPolygons(polys.geoms[at_bottom], polys.values[at_bottom])])
        self.peak_open = max(self.peak_open, len(self.open))
        return ClassPolygons(polys.geoms[~at_bottom], polys.values[~at_bottom])

    def finish(self) -> ClassPolygons:
        out, self.open = self.open, ClassPolygons.concat([])
        return out


class GridPolygonizer:
    """Feed it blocks (Dask chunks) of a ``(height, width)`` class map in any order with :meth:`add`; each call
    returns the polygons that are final, :meth:`finish` the rest.

    The strips' seam logic in both directions: a polygon that touches a block not yet done is held; when that block
    arrives, held polygons and its new polygons of the same class that share a stretch of their common border are
    unioned. A polygon is final once no block it touches is missing, so the features equal the strips'.
    """

    def __init__(self, height: int, width: int, ignore: Iterable[float] = ()) -> None:
        import shapely

        self.ignore = [v for v in ignore if v is not None]
        self.open = ClassPolygons.concat([])
        self.missing = shapely.box(0, 0, width, height)
        """The part of the map no block has covered yet."""
        self.peak_open = 0

    def add(self, row_off: int, col_off: int, data: np.ndarray, valid: np.ndarray | None = None) -> ClassPolygons:
        """Take the block at ``row_off, col_off`` of a 2-D class map; ``valid`` masks pixels out."""
        import shapely

        h, w = data.shape
        box = shapely.box(col_off, row_off, col_off + w, row_off + h)
        self.missing = shapely.difference(self.missing, box)
        shapely.prepare(self.missing)
        new = block_polygons(row_off, col_off, data, valid, self.ignore)
        b = shapely.bounds(new.geoms) if len(new) else np.zeros((0, 4))
        edge = (b[:, 0] <= col_off) | (b[:, 1] <= row_off) | (b[:, 2] >= col_off + w) | (b[:, 3] >= row_off + h)
        near = shapely.intersects(self.open.geoms, box) if len(self.open) else np.zeros(0, bool)
        old = ClassPolygons(self.open.geoms[near], self.open.values[near])
        self.open = ClassPolygons(self.open.geoms[~near], self.open.values[~near])
        joined, rest_old, rest_new = join_across(old, new.geoms[edge], new.values[edge])
        final = self._hold(ClassPolygons.concat([joined, rest_old, rest_new]))
        return ClassPolygons.concat([ClassPolygons(new.geoms[~edge], new.values[~edge]), final])

    def _hold(self, polys: ClassPolygons) -> ClassPolygons:
        """Hold the polygons that touch a missing block; return the others."""
        import shapely

        if not len(polys) or shapely.is_empty(self.missing):
            return polys
        held = shapely.intersects(polys.geoms, self.missing)
        self.open = ClassPolygons.concat([self.open, ClassPolygons(polys.geoms[held], polys.values[held])])
        self.peak_open = max(self.peak_open, len(self.open))
        return ClassPolygons(polys.geoms[~held], polys.values[~held])

    def finish(self) -> ClassPolygons:
        out, self.open = self.open, ClassPolygons.concat([])
        return out
