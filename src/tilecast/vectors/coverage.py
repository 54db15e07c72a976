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

__all__ = ["CoverageSimplifier", "has_coverage_simplify"]


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

    def simplify(self, geoms: np.ndarray) -> np.ndarray:
        """The regions (map coordinates) simplified as one coverage, or one by one on an older shapely."""
        import shapely

        if not has_coverage_simplify():
            return shapely.simplify(geoms, self.tolerance, preserve_topology=True)
        return shapely.coverage_simplify(geoms, self.tolerance)
