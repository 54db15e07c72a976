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

__all__ = ["ClassPolygons", "StripPolygonizer"]

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


class StripPolygonizer:
    """Feed it strips of a class map top to bottom with :meth:`add`; each call returns the polygons that are final,
    and :meth:`finish` the rest. ``ignore``: values that are not regions (nodata, a background class)."""

    def __init__(self, ignore: Iterable[float] = ()) -> None:
        self.ignore = [v for v in ignore if v is not None]
        self.open = ClassPolygons.concat([])
        self.bottom = 0
        self.peak_open = 0
        """The most polygons held at once, for tests and benchmarks."""

    def _shapes(self, row_off: int, data: np.ndarray, valid: np.ndarray | None) -> ClassPolygons:
        import shapely
        from affine import Affine
        from rasterio.features import shapes

        if data.dtype.name not in _SHAPES_DTYPES:
            data = data.astype(np.int32 if data.dtype.kind in "iub" else np.float32)
        mask = np.ones(data.shape, bool) if valid is None else valid.copy()
        for v in self.ignore:
            mask &= ~(np.isnan(data) if isinstance(v, float) and np.isnan(v) else data == v)
        if not mask.any():
            return ClassPolygons.concat([])
        geoms, values = [], []
        for geom, value in shapes(data, mask=mask, connectivity=4, transform=Affine.translation(0, row_off)):
            rings = geom["coordinates"]
            geoms.append(shapely.Polygon(rings[0], rings[1:]))
            values.append(value)
        return ClassPolygons(np.asarray(geoms, dtype=object), np.asarray(values))

    def add(self, row_off: int, data: np.ndarray, valid: np.ndarray | None = None) -> ClassPolygons:
        """Take rows ``[row_off, row_off + len(data))`` of a 2-D class map; ``valid`` masks pixels out."""
        import shapely

        if row_off != self.bottom:
            from ..errors import InputError

            raise InputError(f"strips must come in order: expected row {self.bottom}, got {row_off}")
        new = self._shapes(row_off, data, valid)
        self.bottom = row_off + data.shape[0]
        top = shapely.bounds(new.geoms)[:, 1] <= row_off if len(new) else np.zeros(0, bool)
        old, self.open = self.open, ClassPolygons.concat([])
        joined, rest_old, rest_new = self._join(old, new.geoms[top], new.values[top])
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

    def _join(self, old: ClassPolygons, geoms: np.ndarray,
              values: np.ndarray) -> tuple[ClassPolygons, ClassPolygons, ClassPolygons]:
        """Union open polygons with the new ones across the seam: (joined, old unmatched, new unmatched)."""
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
        for k in set(i.tolist()) | set((j + n_old).tolist()):
            groups.setdefault(find(k), []).append(k)
        everything = np.concatenate([old.geoms, geoms])
        all_values = np.concatenate([old.values, values])
        merged = [shapely.union_all(everything[g]) for g in groups.values()]
        merged_values = [all_values[g[0]] for g in groups.values()]
        used = np.zeros(len(parent), bool)
        used[[k for g in groups.values() for k in g]] = True
        joined = ClassPolygons(np.asarray(merged, dtype=object), np.asarray(merged_values))
        return (joined, ClassPolygons(old.geoms[~used[:n_old]], old.values[~used[:n_old]]),
                ClassPolygons(geoms[~used[n_old:]], values[~used[n_old:]]))

    def finish(self) -> ClassPolygons:
        out, self.open = self.open, ClassPolygons.concat([])
        return out
