"""The seam-aware merger: objects from overlapping tiles become one object each, in bounded memory.

Coordinates are pixels of the grid the model sees (``x`` = column, ``y`` = row). A tile's *private* area is the part
of its core that no other tile sees: the core shrunk by the overlap on every side that has a neighbour. An object
inside it, and not cut by the tile's edge, is final as soon as its tile is done. Any other object may have been seen
by a neighbour too, so it waits in the seam zone until the last tile that can see it (worked out from the plan's rows
and columns) is done. Then the copies are matched, class by class, by intersection over the smaller object (or IoU)
measured inside the pixels both tiles saw, so a copy cut off by one tile's edge still matches the whole one (without
overlap, pieces match along the seam they share). Each group of matches becomes one object: the best copy that no
tile edge cut, or, when every copy was cut (an object larger than the overlap), the union of the pieces. Tiles
finish in row-major order, so the seam zone holds about one row of tiles' seam objects, whatever the size of the
scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..plan import TilePlan
from .metadata import DetectorSpec

__all__ = ["Objects", "SeamMerger", "TileGrid"]

Kind = Literal["box", "rotated", "polygon"]


@dataclass
class Objects:
    """Objects in grid pixel coordinates: shapely polygons with score, class, source tile and whether a tile's
    edge cut them."""

    geoms: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    truncated: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> Objects:
        return Objects(self.geoms[idx], self.scores[idx], self.classes[idx], self.rows[idx], self.cols[idx],
                       self.truncated[idx])

    @classmethod
    def empty(cls) -> Objects:
        return cls(np.empty(0, object), np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, np.int32),
                   np.zeros(0, np.int32), np.zeros(0, bool))

    @classmethod
    def concat(cls, parts: Sequence[Objects]) -> Objects:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                     ("geoms", "scores", "classes", "rows", "cols", "truncated")))


class TileGrid:
    """The plan's tiles as the merger needs them: each tile's view (core plus halo) and private area."""

    def __init__(self, plan: TilePlan) -> None:
        g = plan.geometry
        self.tw, self.th = g.tile.x, g.tile.y
        self.ox, self.oy = g.overlap.x, g.overlap.y
        self.x0, self.y0 = int(plan.region.col_off), int(plan.region.row_off)
        self.region_width, self.region_height = int(plan.region.width), int(plan.region.height)
        self.rows, self.cols = plan.tile_rows, plan.tile_cols

    def origin(self, row: int, col: int) -> tuple[int, int]:
        """Grid ``(x, y)`` of the top-left pixel of the model's input for a tile."""
        return self.x0 + col * self.tw - self.ox, self.y0 + row * self.th - self.oy

    def views(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``(n, 4)`` views ``x1, y1, x2, y2`` of tiles."""
        x1 = self.x0 + cols * self.tw - self.ox
        y1 = self.y0 + rows * self.th - self.oy
        return np.stack([x1, y1, x1 + self.tw + 2 * self.ox, y1 + self.th + 2 * self.oy], axis=1).astype(np.float64)

    def private(self, row: int, col: int) -> tuple[float, float, float, float]:
        inf = np.inf
        x1 = -inf if col == 0 else self.x0 + col * self.tw + self.ox
        x2 = inf if col == self.cols - 1 else self.x0 + (col + 1) * self.tw - self.ox
        y1 = -inf if row == 0 else self.y0 + row * self.th + self.oy
        y2 = inf if row == self.rows - 1 else self.y0 + (row + 1) * self.th - self.oy
        return x1, y1, x2, y2

    def last_seer(self, bounds: np.ndarray) -> np.ndarray:
        """Row-major index of the last tile whose view meets each ``x1, y1, x2, y2`` box."""
        c = np.ceil((bounds[:, 2] - self.x0 + self.ox) / self.tw).astype(np.int64) - 1
        r = np.ceil((bounds[:, 3] - self.y0 + self.oy) / self.th).astype(np.int64) - 1
        return np.clip(r, 0, self.rows - 1) * self.cols + np.clip(c, 0, self.cols - 1)


class _Links:
    """Union-find over pending objects, plus the matched pairs (for greedy suppression inside a group)."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)
        self.pairs: set[tuple[int, int]] = set()

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return int(i)

    def add(self, a: int, b: int) -> None:
        self.pairs.add((min(a, b), max(a, b)))
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def linked(self, a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) in self.pairs


class SeamMerger:
    """Feed it each tile's objects in plan order with :meth:`add_tile`; it returns what is final; :meth:`finish`
    returns the rest. ``kind``: ``box`` (axis-aligned), ``rotated`` (oriented boxes) or ``polygon`` (instances)."""

    def __init__(self, plan: TilePlan, spec: DetectorSpec, kind: Kind = "box") -> None:
        self.grid = TileGrid(plan)
        self.threshold = spec.merge_threshold
        self.match = spec.match
        self.kind = kind
        self.pending = Objects.empty()
        self.last = np.zeros(0, np.int64)
        self.peak_pending = 0
        """The most objects held at once (the seam zone's size), for tests and benchmarks."""

    def add_tile(self, row: int, col: int, objects: Objects) -> Objects:
        import shapely

        index = row * self.grid.cols + col
        out = []
        if len(objects):
            b = shapely.bounds(objects.geoms)
            x1, y1, x2, y2 = self.grid.private(row, col)
            final = (b[:, 0] >= x1) & (b[:, 2] <= x2) & (b[:, 1] >= y1) & (b[:, 3] <= y2) & ~objects.truncated
            out.append(objects.take(np.flatnonzero(final)))
            held = np.flatnonzero(~final)
            if held.size:
                self.pending = Objects.concat([self.pending, objects.take(held)])
                # a pixel further: without overlap, the tile across the seam a piece touches holds its other piece
                reach = b[held] + np.array([0.0, 0.0, 1.0, 1.0])
                self.last = np.concatenate([self.last, np.maximum(self.grid.last_seer(reach), index)])
                self.peak_pending = max(self.peak_pending, len(self.pending))
        if (self.last == index).any():
            out.append(self._release(index))
        return Objects.concat(out)

    def finish(self) -> Objects:
        return self._release(np.iinfo(np.int64).max)

    def _release(self, index: int) -> Objects:
        ready = np.flatnonzero(self.last <= index)
        if ready.size == 0:
            return Objects.empty()
        links = self._links(ready)
        groups: dict[int, list[int]] = {}
        linked = {k for pair in links.pairs for k in pair}
        for i in sorted(linked.union(ready.tolist())):  # an unlinked object that is not ready waits alone
            groups.setdefault(links.find(i), []).append(i)
        done: list[int] = []
        alone: list[int] = []  # a group of one is released as it is, all of them in one take
        merged: list[Objects] = []
        for members in groups.values():
            if self.last[members].max() > index:
                continue
            done.extend(members)
            if len(members) == 1:
                alone.append(members[0])
            else:
                merged.append(self._merge(np.asarray(members), links))
        out = Objects.concat([self.pending.take(np.asarray(alone, np.int64)), *merged])
        keep = np.ones(len(self.pending), bool)
        keep[done] = False
        self.pending = self.pending.take(np.flatnonzero(keep))
        self.last = self.last[keep]
        return out

    def _links(self, ready: np.ndarray) -> _Links:
        import shapely

        p = self.pending
        links = _Links(len(p))
        tree = shapely.STRtree(p.geoms)
        qi, j = tree.query(p.geoms[ready], predicate="intersects")
        i = ready[qi]
        ok = (i != j) & (p.classes[i] == p.classes[j]) & ((p.rows[i] != p.rows[j]) | (p.cols[i] != p.cols[j]))
        i, j = i[ok], j[ok]
        if i.size == 0:
            return links
        va, vb = self.grid.views(p.rows[i], p.cols[i]), self.grid.views(p.rows[j], p.cols[j])
        shared = np.concatenate([np.maximum(va[:, :2], vb[:, :2]), np.minimum(va[:, 2:], vb[:, 2:])], axis=1)
        if self.kind == "box":
            match = self._match_boxes(shapely.bounds(p.geoms[i]), shapely.bounds(p.geoms[j]), shared)
        else:
            match = self._match_polygons(p.geoms[i], p.geoms[j], shared)
        flat = (shared[:, 2] <= shared[:, 0]) | (shared[:, 3] <= shared[:, 1])
        if flat.any():  # no overlap between the tiles: pieces cut by the seam meet along it
            touch = shapely.length(shapely.intersection(p.geoms[i[flat]], p.geoms[j[flat]])) > 0
            match[flat] = touch & p.truncated[i[flat]] & p.truncated[j[flat]]
        for a, b in zip(i[match].tolist(), j[match].tolist(), strict=True):
            links.add(a, b)
        return links

    def _score(self, inter: np.ndarray, aa: np.ndarray, ab: np.ndarray) -> np.ndarray:
        den = np.minimum(aa, ab) if self.match == "ios" else aa + ab - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(den > 0, inter / np.where(den > 0, den, 1), 0.0)

    def _match_boxes(self, ba: np.ndarray, bb: np.ndarray, shared: np.ndarray) -> np.ndarray:
        def clip(b: np.ndarray) -> np.ndarray:
            return np.concatenate([np.maximum(b[:, :2], shared[:, :2]), np.minimum(b[:, 2:], shared[:, 2:])], axis=1)

        def area(b: np.ndarray) -> np.ndarray:
            return np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)

        ca, cb = clip(ba), clip(bb)
        inter = area(np.concatenate([np.maximum(ca[:, :2], cb[:, :2]), np.minimum(ca[:, 2:], cb[:, 2:])], axis=1))
        return self._score(inter, area(ca), area(cb)) >= self.threshold

    def _match_polygons(self, ga: np.ndarray, gb: np.ndarray, shared: np.ndarray) -> np.ndarray:
        import shapely

        boxes = shapely.box(*shared.T)
        ca, cb = shapely.intersection(ga, boxes), shapely.intersection(gb, boxes)
        inter = shapely.area(shapely.intersection(ca, cb))
        return self._score(inter, shapely.area(ca), shapely.area(cb)) >= self.threshold

    def _merge(self, members: np.ndarray, links: _Links) -> Objects:
        import shapely

        p = self.pending
        if members.size == 1:
            return p.take(members)
        whole = members[~p.truncated[members]]
        if whole.size:  # greedy suppression among the copies that no tile edge cut
            kept: list[int] = []
            for m in whole[np.argsort(-p.scores[whole], kind="stable")].tolist():
                if not any(links.linked(m, k) for k in kept):
                    kept.append(m)
            return p.take(np.asarray(kept))
        best = members[np.argmax(p.scores[members])]
        geoms = p.geoms[members]
        if self.kind == "box":
            b = shapely.bounds(geoms)
            geom = shapely.box(b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
        else:
            geom = shapely.union_all(geoms)
            if self.kind == "rotated":
                geom = shapely.oriented_envelope(geom)
        out = p.take(np.asarray([best]))
        out.geoms = np.asarray([geom], dtype=object)
        return out
