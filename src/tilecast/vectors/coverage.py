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

__all__ = ["CoverageSimplifier", "StreamNoder", "frame", "has_coverage_simplify", "noded", "on_edges"]


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
        return ClassPolygons(noded(out.geoms[order]), out.values[order])

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


def noded(geoms: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """The polygons (grid pixels: whole numbers, axis-parallel edges) with a vertex wherever another one's vertex
    (or a point of ``extra``, ``(n, 2)``: vertices of neighbours held elsewhere) lies inside one of their edges.

    Canonical polygons (as GDAL's) have no vertex in the middle of a straight edge, so where two regions meet on
    the straight edge of a third (a T-junction) the third has no vertex there: the edges are not shared vertex for
    vertex, as a coverage needs (``shapely.coverage_is_valid``), and the simplified regions would not be a valid
    coverage either. The geometry (and the pixels it covers) does not change.
    """
    import shapely

    rings, owner = shapely.get_rings(geoms, return_index=True)
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    if not len(xy):
        return geoms
    every = xy if extra is None or not len(extra) else np.concatenate([xy, extra])
    m = float(np.abs(every).max()) + 1.0
    span = 2.0 * m + 1.0  # keys ``line * span + m + position``: one order for (line, position), exact in float64
    seg = np.flatnonzero(ring[1:] == ring[:-1])  # the edge from vertex seg to seg + 1
    start, end = xy[seg], xy[seg + 1]
    at: list[np.ndarray] = []
    points: list[np.ndarray] = []
    for along in (0, 1):  # along x (edges of one y), then along y (edges of one x)
        line = 1 - along
        edge = start[:, line] == end[:, line]
        keys = np.unique(every[:, line] * span + m + every[:, along])  # every vertex, sorted by line then position
        base = start[edge, line] * span + m
        lo = np.minimum(start[edge, along], end[edge, along])
        hi = np.maximum(start[edge, along], end[edge, along])
        first = np.searchsorted(keys, base + lo, "right")
        stop = np.searchsorted(keys, base + hi, "left")
        ks = np.flatnonzero(stop > first)  # the edges with a T-junction, and the keys inside each, in its direction
        counts = stop[ks] - first[ks]
        group = np.repeat(np.arange(len(ks)), counts)
        rank = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
        backwards = (start[edge][ks, along] > end[edge][ks, along])[group]
        inside = first[ks][group] + np.where(backwards, counts[group] - 1 - rank, rank)
        pts = np.empty((len(group), 2))
        pts[:, along], pts[:, line] = keys[inside] - base[ks][group], start[edge][ks, line][group]
        if len(group):
            at.append(seg[edge][ks][group] + 1)
            points.append(pts)
    if not at:
        return geoms
    where = np.concatenate(at)
    xy = np.insert(xy, where, np.concatenate(points), axis=0)
    ring = np.insert(ring, where, ring[where - 1])
    return shapely.polygons(shapely.linearrings(xy, indices=ring), indices=owner)


class StreamNoder:
    """:func:`noded` for regions that stream out in batches as they become final, while their polygonizer still
    holds some of their neighbours.

    A region's T-junctions are vertices of its neighbours, which are final in the same batch, still held, or were
    final before (while it was held): the vertices of a batch that lie on a held region are kept for it. Without
    this, a reprojected map opens gaps and overlaps where neighbours meet on a long straight edge: the edge's
    vertices are reprojected and joined by a straight line, the junction between them is reprojected onto the
    curve (1.7 m apart in the middle of a 10 km edge of UTM in lon/lat).
    """

    def __init__(self) -> None:
        self.pending = np.zeros((0, 2))
        """Vertices of regions written already that lie on the boundary of a region still held."""

    def node(self, final: np.ndarray, held: np.ndarray) -> np.ndarray:
        """``final`` noded against each other, the ``held`` regions and the pending vertices."""
        import shapely

        if not len(final):
            return final
        x0, y0, x1, y1 = shapely.total_bounds(final)
        around = np.concatenate([shapely.get_coordinates(held) if len(held) else np.zeros((0, 2)), self.pending])
        around = around[(around[:, 0] >= x0) & (around[:, 0] <= x1) & (around[:, 1] >= y0) & (around[:, 1] <= y1)]
        out = noded(final, around)
        points = np.concatenate([shapely.get_coordinates(final), self.pending])
        key = points[:, 0] * (2.0 * float(np.abs(points[:, 1]).max(initial=0.0)) + 3.0) + points[:, 1]
        points = points[np.unique(key, return_index=True)[1]]  # whole numbers: exact keys
        self.pending = points[on_edges(points, held)] if len(held) and len(points) else np.zeros((0, 2))
        return out


def on_edges(points: np.ndarray, geoms: np.ndarray) -> np.ndarray:
    """Which of ``points`` ``(n, 2)`` lie on an edge (ends included) of the polygons ``geoms``, in grid pixels
    (whole numbers, axis-parallel edges): exact, and without a point-in-polygon test per point."""
    import shapely

    xy, ring = shapely.get_coordinates(shapely.get_rings(geoms), return_index=True)
    hit = np.zeros(len(points), bool)
    if not len(xy) or not len(points):
        return hit
    m = float(max(np.abs(xy).max(), np.abs(points).max())) + 1.0
    span = 2.0 * m + 1.0  # keys ``line * span + m + position``, as in :func:`noded`
    seg = np.flatnonzero(ring[1:] == ring[:-1])
    start, end = xy[seg], xy[seg + 1]
    for along in (0, 1):
        line = 1 - along
        edge = start[:, line] == end[:, line]
        keys = points[:, line] * span + m + points[:, along]
        order = np.argsort(keys, kind="stable")
        base = start[edge, line] * span + m
        first = np.searchsorted(keys[order], base + np.minimum(start[edge, along], end[edge, along]), "left")
        stop = np.searchsorted(keys[order], base + np.maximum(start[edge, along], end[edge, along]), "right")
        depth = np.zeros(len(points) + 1, np.int64)
        np.add.at(depth, first, 1)
        np.add.at(depth, stop, -1)
        hit[order[np.cumsum(depth[:-1]) > 0]] = True
    return hit
