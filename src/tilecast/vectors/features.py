"""From merged objects in pixel coordinates to features: map coordinates, attributes, and a place to put them.

Geometry stays in grid pixels through decoding and merging (whole numbers for polygons, so unions are exact) and
goes through the grid's affine transform, then to ``vector_crs`` if given, only on the way out. A
:class:`PolygonSink` is the raster pipeline's :class:`~tilecast.sinks.base.Sink` for class maps: it polygonizes
each strip as the runner hands it over.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine
from rasterio.windows import Window

from ..sinks.base import OutputProfile
from .merge import Objects
from .polygonize import ClassPolygons, GridPolygonizer, StripPolygonizer
from .write import box_wkb

__all__ = [
    "FeatureOutput", "FeatureTarget", "Features", "PolygonChunkSink", "PolygonSink", "equal_area", "equal_areas",
    "object_fields", "polygon_fields",
]


@runtime_checkable
class FeatureTarget(Protocol):
    """Where features go: a :class:`~tilecast.vectors.write.VectorWriter`, or :class:`Features` in memory."""

    reprojects: bool
    """Whether the target moves the geometry to another CRS itself (GeoJSON: WGS84 lon/lat)."""

    def write(self, geoms: np.ndarray, columns: Mapping[str, np.ndarray]) -> None: ...

    def write_wkb(self, wkb: Any, columns: Mapping[str, np.ndarray]) -> None:
        """The same, with the geometry already WKB (a pyarrow binary array)."""
        ...


class Features:
    """Features gathered in memory (for small areas), turned into a GeoDataFrame at the end."""

    reprojects = False

    def __init__(self, crs: Any) -> None:
        self.crs = crs
        self.geoms: list[np.ndarray] = []
        self.columns: dict[str, list[np.ndarray]] = {}

    def write(self, geoms: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        self.geoms.append(np.asarray(geoms, dtype=object))
        for k, v in columns.items():
            self.columns.setdefault(k, []).append(np.asarray(v))

    def write_wkb(self, wkb: Any, columns: Mapping[str, np.ndarray]) -> None:
        import shapely

        self.write(shapely.from_wkb(wkb.to_numpy(zero_copy_only=False)), columns)

    def to_geodataframe(self, fields: Mapping[str, Any]) -> Any:
        from .._extras import require

        gpd = require("geopandas", "features")
        geoms = np.concatenate(self.geoms) if self.geoms else np.empty(0, object)
        data = {k: (np.concatenate(self.columns[k]) if self.columns.get(k) else np.empty(0, dtype=dt))
                for k, dt in fields.items()}
        return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries(geoms, crs=self.crs), crs=self.crs)


def object_fields(with_area: bool) -> dict[str, Any]:
    """Attributes of detected objects: class, score, the tile that saw them, and the area of polygons."""
    out: dict[str, Any] = {"class_id": np.int32, "class_name": object, "score": np.float32, "tile_row": np.int32,
                           "tile_col": np.int32}
    if with_area:
        out["area"] = np.float64
    return out


def polygon_fields(dtype: Any = np.uint8) -> dict[str, Any]:
    """Attributes of class-map polygons; ``class_id`` is int32, or int64 for a map whose ``dtype`` int32 cannot
    hold (uint32, int64, uint64), so every class keeps its value."""
    wide = not np.can_cast(np.dtype(dtype), np.int32)
    return {"class_id": np.int64 if wide else np.int32, "class_name": object, "area": np.float64}


def equal_area(crs: Any) -> Any:
    """For a geographic CRS (units: degrees), the ``pyproj.Transformer`` to a cylindrical equal-area projection of
    its own ellipsoid, where areas are square metres on the ellipsoid; None for any other CRS."""
    if crs is None:
        return None
    from pyproj import CRS, Transformer
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import LambertCylindricalEqualAreaConversion

    crs = CRS.from_user_input(crs)
    if not crs.is_geographic:
        return None
    cea = ProjectedCRS(LambertCylindricalEqualAreaConversion(0.0, 0.0), geodetic_crs=crs.geodetic_crs)
    return Transformer.from_crs(crs, cea, always_xy=True)


def equal_areas(geoms: np.ndarray, transformer: Any) -> np.ndarray:
    """Areas in square metres of lon/lat polygons, measured in the equal-area projection of :func:`equal_area`.

    Each polygon is first shifted in longitude to start at 0 (a cylindrical projection's areas do not change), so
    one that crosses longitude 180, or lies past it (0..360 longitudes), is not cut by the projection's wrap-around.
    """
    import shapely

    xy, owner = shapely.get_coordinates(geoms, return_index=True)
    if not len(xy):
        return np.zeros(len(geoms))
    xy[:, 0] -= shapely.bounds(geoms)[owner, 0]
    x, y = transformer.transform(xy[:, 0], xy[:, 1])
    # set_coordinates replaces the array's geometries: a copy of the array, so the caller's keep their coordinates
    return shapely.area(shapely.set_coordinates(np.array(geoms, dtype=object), np.stack([x, y], axis=1)))


class FeatureOutput:
    """Moves pixel-space objects or polygons to map coordinates, filters and simplifies them, adds attributes,
    and hands them to a :class:`FeatureTarget`."""

    def __init__(
        self,
        target: FeatureTarget,
        transform: Affine,
        crs: Any,
        class_names: Mapping[int, str],
        *,
        vector_crs: Any = None,
        with_area: bool = True,
        simplify: float | None = None,
        min_area: float | None = None,
        boxes: bool = False,
        class_dtype: Any = np.int32,
    ) -> None:
        self.target = target
        self.class_dtype = np.dtype(class_dtype)
        """The type of the ``class_id`` field (:func:`polygon_fields`)."""
        self.boxes = boxes
        """Objects are axis-aligned boxes (``shapely.box``): written as WKB straight from their bounds."""
        self.transform = transform
        self.class_names = dict(class_names)
        self.with_area = with_area
        self.simplify = simplify
        self.min_area = min_area
        self.count = 0
        self._reproject = None
        self._coverage: Any = None
        self._noder: Any = None
        for name, value in (("simplify", simplify), ("min_area", min_area)):
            if value is not None and not (np.isfinite(value) and value >= 0):
                from ..errors import SpecError

                raise SpecError(f"{name}= (--{name.replace('_', '-')}) must be a finite number >= 0, got {value}")
        if vector_crs is not None and crs is None:
            from pyproj import CRS

            from ..errors import InputError

            raise InputError(f"the raster has no CRS, so its features cannot be reprojected to "
                             f"{CRS.from_user_input(vector_crs).to_string()}; give the raster a CRS, or drop "
                             "vector_crs= (--vector-crs) to write them in its own coordinates")
        if vector_crs is not None and crs is not None and vector_crs != crs:
            from pyproj import Transformer

            self._reproject = Transformer.from_crs(crs, vector_crs, always_xy=True)
        self._equal_area = equal_area(vector_crs if vector_crs is not None else crs)
        """Where areas are measured when the output CRS is geographic (its units are degrees, not metres)."""
        if self._equal_area is not None and simplify is not None and simplify >= 1:
            import warnings

            from ..errors import TilecastWarning

            warnings.warn(f"simplify={simplify} is in the output CRS's units, degrees (about {111 * simplify:.0f} km): "
                          "regions will collapse; for N metres give about N / 111000 (e.g. 5 m: 4.5e-5)",
                          TilecastWarning, stacklevel=3)

    def _move(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates to map coordinates (then to ``vector_crs``), vertex by vertex."""
        a = self.transform
        x = a.a * px + a.b * py + a.c
        y = a.d * px + a.e * py + a.f
        if self._reproject is not None:
            x, y = self._reproject.transform(x, y)
        return x, y

    def _to_map_exact(self, geoms: np.ndarray) -> np.ndarray:
        import shapely

        return shapely.transform(geoms, lambda xy: np.stack(self._move(xy[:, 0], xy[:, 1]), axis=1))

    def _to_map(self, geoms: np.ndarray) -> np.ndarray:
        import shapely

        out = self._to_map_exact(geoms)
        if self.simplify:
            out = shapely.simplify(out, self.simplify, preserve_topology=True)
        return out

    def _names(self, classes: np.ndarray) -> np.ndarray:
        ids, inverse = np.unique(classes, return_inverse=True)
        names = np.asarray([self.class_names.get(int(c), str(int(c))) for c in ids], dtype=object)
        return names[inverse.reshape(-1)]

    def _filter(self, geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import shapely

        keep = ~shapely.is_empty(geoms)
        if not (self.with_area or self.min_area):
            return keep, np.zeros(len(geoms))
        area = shapely.area(geoms) if self._equal_area is None else equal_areas(geoms, self._equal_area)
        if self.min_area:
            keep &= area >= self.min_area
        return keep, area

    def objects(self, objs: Objects) -> None:
        if not len(objs):
            return
        if self.boxes and not (self.simplify or self.min_area or self.with_area):
            self._boxes(objs)
            return
        geoms = self._to_map(objs.geoms)
        keep, area = self._filter(geoms)
        cols: dict[str, np.ndarray] = {
            "class_id": objs.classes[keep].astype(np.int32), "class_name": self._names(objs.classes[keep]),
            "score": objs.scores[keep].astype(np.float32), "tile_row": objs.rows[keep].astype(np.int32),
            "tile_col": objs.cols[keep].astype(np.int32),
        }
        if self.with_area:
            cols["area"] = area[keep]
        self.target.write(geoms[keep], cols)
        self.count += int(keep.sum())

    def _boxes(self, objs: Objects) -> None:
        """Boxes straight to WKB: the ring ``shapely.box`` writes, moved by the same arithmetic as :meth:`_to_map`,
        so the features are the same bytes as through shapely, without a shapely object per feature."""
        import shapely

        b = shapely.bounds(objs.geoms)
        x, y = self._move(b[:, [2, 2, 0, 0, 2]].ravel(), b[:, [1, 3, 3, 1, 1]].ravel())
        cols = {"class_id": objs.classes.astype(np.int32), "class_name": self._names(objs.classes),
                "score": objs.scores.astype(np.float32), "tile_row": objs.rows.astype(np.int32),
                "tile_col": objs.cols.astype(np.int32)}
        self.target.write_wkb(box_wkb(np.asarray(x).reshape(-1, 5), np.asarray(y).reshape(-1, 5)), cols)
        self.count += len(objs)

    def polygons(self, polys: ClassPolygons, last: bool | None = None, held: ClassPolygons | None = None) -> None:
        """Write final class-map regions. ``last`` (False, then True with the last batch) says they are the regions
        of one map: simplified, they are gathered and simplified together so neighbours keep sharing their edges
        (:mod:`~tilecast.vectors.coverage`); None: each polygon on its own. ``held``: the regions the polygonizer
        still holds; reprojected, the regions are noded against them and each other first (their T-junctions)."""
        if self.simplify and last is not None:
            from .coverage import CoverageSimplifier, frame

            if self._coverage is None:
                self._coverage = CoverageSimplifier(self.simplify)
            self._coverage.add(polys)
            if not last:
                return
            polys = self._coverage.gathered()
            if len(polys):  # the frame keeps the map's border and corners where they are
                move = self._to_map_exact
                geoms = self._coverage.simplify(move(polys.geoms), move(frame(polys.geoms)))
            else:
                geoms = polys.geoms
        elif not len(polys):
            return
        elif last is not None and (self._reproject is not None or self.target.reprojects):
            from .coverage import StreamNoder

            if self._noder is None:
                self._noder = StreamNoder()
            around = held.geoms if held is not None else np.empty(0, object)
            geoms = self._to_map(self._noder.node(polys.geoms, around))
        else:
            geoms = self._to_map(polys.geoms)
        if not len(geoms):
            return
        keep, area = self._filter(geoms)
        classes = polys.values[keep]
        if classes.dtype.kind == "u" and len(classes) and classes.max() > np.iinfo(np.int64).max:
            from .errors import VectorFormatError

            raise VectorFormatError(f"class {int(classes.max())} does not fit the int64 class_id field of a vector "
                                    "file; renumber the classes below 2**63")
        self.target.write(geoms[keep], {"class_id": classes.astype(self.class_dtype),
                                        "class_name": self._names(classes), "area": area[keep]})
        self.count += int(keep.sum())


class PolygonSink:
    """A raster :class:`~tilecast.sinks.base.Sink` that polygonizes a class map strip by strip.

    ``band`` picks the output band (0-based); nodata pixels and the ``ignore`` values are not regions.
    ``block_rows`` sets how many rows each strip has at least (the runner hands over finished tile rows).
    """

    def __init__(self, output: FeatureOutput, *, band: int = 0, ignore: tuple[float, ...] = (),
                 block_rows: int = 1, on_close: Any = None) -> None:
        self.output = output
        self.band = band
        self.ignore = ignore
        self.block_rows = block_rows
        self.on_close = on_close
        self.polygonizer = StripPolygonizer(ignore)

    def open(self, profile: OutputProfile) -> None:
        self.output.transform = profile.grid.transform
        bands = profile.bands
        if bands and bands[0].classes and not self.output.class_names:
            self.output.class_names = {int(k): str(v) for k, v in dict(bands[0].classes).items()}
        self.polygonizer = StripPolygonizer((*self.ignore, profile.nodata))

    def write(self, window: Window, data: np.ndarray) -> None:
        arr = data[self.band] if data.ndim == 3 else data
        final = self.polygonizer.add(int(window.row_off), arr)
        self.output.polygons(final, last=False, held=self.polygonizer.open)

    def close(self) -> Any:
        self.output.polygons(self.polygonizer.finish(), last=True)
        return self.on_close() if self.on_close is not None else None

    def abort(self) -> None:
        if self.on_close is not None:
            self.on_close(abort=True)


class PolygonChunkSink(PolygonSink):
    """The Dask engine's :class:`~tilecast.sinks.base.ChunkSink` for class maps: chunks come back to the client in
    any order and are polygonized there, the seams dissolved across chunk borders both ways
    (:class:`~tilecast.vectors.polygonize.GridPolygonizer`). Not resumable: features are streamed out."""

    def prepare(self, profile: OutputProfile, fingerprint: str, chunks: tuple[int, int], resume: bool) -> set[int]:
        if resume:
            from ..errors import SpecError

            raise SpecError("vector outputs cannot resume; run again with overwrite=True (--overwrite)")
        self.open(profile)
        h, w = profile.grid.shape
        self.grid = GridPolygonizer(h, w, (*self.ignore, profile.nodata))
        return set()

    def writer(self) -> None:
        return None

    def write(self, window: Window, data: np.ndarray) -> None:
        arr = data[self.band] if data.ndim == 3 else data
        final = self.grid.add(int(window.row_off), int(window.col_off), arr)
        self.output.polygons(final, last=False, held=self.grid.open)

    def mark(self, indices: Any) -> None:
        pass

    def close(self) -> Any:
        self.output.polygons(self.grid.finish(), last=True)
        return self.on_close() if self.on_close is not None else None

    def abort(self, keep: bool = False) -> None:
        super().abort()
