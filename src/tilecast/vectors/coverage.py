"""Simplification that keeps shared edges: the regions of one class map simplified together, as a coverage.

``shapely.coverage_simplify`` (shapely >= 2.1, GEOS >= 3.12) simplifies each edge between two regions once, so
neighbours keep sharing it exactly and no gap or overlap opens between them. Its result for an edge depends on the
edges around it (it removes vertices only where no other vertex stands in the way, and it works through the edges
in turn), so simplifying the streamed regions batch by batch would leave a few shared edges that differ between
the two sides' batches. The regions of the map are therefore gathered (as polygons, not pixels) and simplified at
once when the last strip or chunk is done; without ``simplify`` they stream out as they become final.
"""

from __future__ import annotations

import warnings

import numpy as np

from .polygonize import ClassPolygons

__all__ = ["CoverageSimplifier", "frame", "has_coverage_simplify"]


def has_coverage_simplify() -> bool:
    """Whether shapely has ``coverage_simplify`` (2.1 and later)."""
    try:
        from shapely import coverage_simplify  # noqa: F401
    except ImportError:
        return False
    return True


class CoverageSimplifier:
    """Gathers a class map's final regions with :meth:`add` and simplifies them together with :meth:`finish`
    (``tolerance`` in the units of the geometries :meth:`finish` is given)."""

    def __init__(self, tolerance: float) -> None:
        self.tolerance = tolerance
        self.parts: list[ClassPolygons] = []
        if not has_coverage_simplify():
            from ..errors import TilecastWarning

            warnings.warn("shapely < 2.1 has no coverage_simplify: polygons are simplified one by one, so neighbours "
                          "may stop sharing edges exactly; install shapely>=2.1 to keep them", TilecastWarning,
                          stacklevel=3)

    def add(self, polys: ClassPolygons) -> None:
        if len(polys):
            self.parts.append(polys)

    def gathered(self) -> ClassPolygons:
        """Every region added, handed over once (the holder lets them go), in one order whatever order they came in
        (the simplified edges depend on it a little), so both engines and any strip size give the same features."""
        import shapely

        out, self.parts = ClassPolygons.concat(self.parts), []
        wkb = shapely.to_wkb(out.geoms)
        order = sorted(range(len(out)), key=lambda i: (out.values[i], wkb[i]))
        return ClassPolygons(out.geoms[order], out.values[order])

    def simplify(self, geoms: np.ndarray, frame: np.ndarray | None = None) -> np.ndarray:
        """The regions (map coordinates) simplified as one coverage, or one by one on an older shapely. ``frame``
        (:func:`frame`, in the same coordinates) is simplified with them and left out of the result."""
        import shapely

        if not has_coverage_simplify():
            return shapely.simplify(geoms, self.tolerance, preserve_topology=True)
        if frame is None:
            return shapely.coverage_simplify(geoms, self.tolerance)
        return shapely.coverage_simplify(np.concatenate([geoms, frame]), self.tolerance)[: len(geoms)]


def frame(geoms: np.ndarray) -> np.ndarray:
    """Four polygons around the bounds of ``geoms`` (grid pixels), meeting at its corners.

    ``coverage_simplify`` also simplifies the outer boundary of a coverage, so alone it cuts the map's corners
    (the map no longer covers the raster). With this frame, the map's border is an edge shared with the frame, and
    each of its corners a node (where two frame pieces meet), which simplification keeps: the border stays straight
    and whole, and nothing is moved outside it; edges against nodata are simplified as before.
    """
    import shapely

    x0, y0, x1, y1 = shapely.total_bounds(geoms)
    a0, b0, a1, b1 = x0 - 1, y0 - 1, x1 + 1, y1 + 1
    rings = [[(x0, y0), (x1, y0), (a1, b0), (a0, b0)], [(x1, y0), (x1, y1), (a1, b1), (a1, b0)],
             [(x1, y1), (x0, y1), (a0, b1), (a1, b1)], [(x0, y1), (x0, y0), (a0, b0), (a0, b1)]]
    return np.asarray([shapely.Polygon(r) for r in rings], dtype=object)
