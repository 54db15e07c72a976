"""Vector files in batches: GeoParquet by row groups (pyarrow), everything else through GDAL's Arrow stream (pyogrio).

Readers yield GeoDataFrames of at most ``batch_size`` rows; writers consume an iterator of them, so memory stays
bounded by one batch whatever the file size. Outputs go to a temporary folder beside the target and are renamed into
place at the end (Shapefile sidecars included).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import InputError, OutputError, SourceNotFoundError, TilecastError
from ..sinks.geotiff import check_output_path
from ..sources import parse_crs
from ..vectors.write import GEOJSON_OPTIONS

__all__ = ["DRIVERS", "FeatureBatch", "FeatureReader", "check_driver", "check_output", "driver_for", "open_features",
           "pandas_column", "write_features"]

DRIVERS = {
    ".parquet": "Parquet",
    ".geoparquet": "Parquet",
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
}
LIST_DRIVERS = ("Parquet", "GeoJSON")
"""Formats that store array (list) columns; the others get one column per element."""


def driver_for(path: str | os.PathLike, driver: str | None = None) -> str:
    if driver:
        return driver
    ext = Path(path).suffix.lower()
    if ext not in DRIVERS:
        raise OutputError(
            f"cannot tell the vector format of {path} from its extension; use one of {sorted(DRIVERS)} "
            "or pass driver= (--driver), e.g. GPKG"
        )
    return DRIVERS[ext]


def check_output(path: str | os.PathLike, overwrite: bool, *inputs: Any) -> Path:
    """``path`` may be written: absent, or ``overwrite``; and never one of the ``inputs`` (the features file, whose
    other layers would be lost, or a sampled raster), whatever ``overwrite`` says."""
    from ..sinks.safety import refuse_overwriting_inputs

    dst = check_output_path(path, overwrite)
    refuse_overwriting_inputs(dst, *(list(i.values()) if isinstance(i, Mapping) else i for i in inputs))
    return dst


def check_driver(path: Path, driver: str, layer: str | None) -> None:
    """Refuse a driver GDAL cannot write with, one the extension contradicts, and a layer name the format ignores."""
    by_extension = DRIVERS.get(path.suffix.lower())
    if by_extension is not None and driver != by_extension and driver in DRIVERS.values():
        raise OutputError(f"{path.name} is {by_extension} by its extension, but driver {driver!r} (--driver) was "
                          "given; leave out --driver or change the extension")
    if driver != "Parquet" and driver not in require("pyogrio", "features").list_drivers(write=True):
        raise OutputError(f"GDAL has no driver {driver!r} that writes vector files; use one of "
                          f"{sorted(set(DRIVERS.values()))} (--driver) or a known extension")
    if layer and driver in ("Parquet", "ESRI Shapefile"):
        raise OutputError(f"a {driver} file holds one layer, named after the file; leave out the layer name "
                          "(output_layer, --output-layer)")


class FeatureBatch:
    """Up to ``batch_size`` features: their properties, their geometry (decoded only when needed), and the
    columns to merge into them (``extra``: 1-D arrays, or 2-D arrays for array-valued properties). ``schema``: the
    file's Arrow types of the properties, which an empty batch's pandas columns cannot tell."""

    def __init__(self, frame: Any, crs: Any, *, geometry: Any = None, wkb: np.ndarray | None = None,
                 geometry_name: str | None = None, schema: Any = None) -> None:
        self.frame = frame
        self.schema = schema
        self.crs = crs
        self._geometry = geometry
        self._wkb = wkb
        self.geometry_name = geometry_name
        self.extra: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.geometry_name]

    @property
    def index(self) -> Any:
        return self.frame.index

    @property
    def geometry(self) -> Any:
        """A GeoSeries; decoded from WKB on first use (only raster-derived inputs need it)."""
        if self._geometry is None:
            gpd = require("geopandas", "features")
            shapely = require("shapely", "features")
            self._geometry = gpd.GeoSeries(shapely.from_wkb(self._wkb), index=self.frame.index, crs=self.crs)
        return self._geometry

    def wkb(self) -> np.ndarray:
        if self._wkb is None:
            shapely = require("shapely", "features")
            self._wkb = shapely.to_wkb(np.asarray(self.geometry.values, dtype=object))
        return self._wkb

    def to_geodataframe(self) -> Any:
        """The features with ``extra`` merged in (a new frame; the input is never changed)."""
        gpd = require("geopandas", "features")
        if self.geometry_name is not None:
            gdf = self.frame.copy() if self.extra else self.frame
        else:
            gdf = gpd.GeoDataFrame(self.frame, geometry=self.geometry, crs=self.crs)
        for name, values in self.extra.items():
            gdf[name] = pandas_column(values)
        return gdf

    def to_arrow(self) -> Any:
        """Properties, then ``extra``, then the WKB geometry column ``geometry``."""
        pa = require("pyarrow", "features")
        frame = self.frame
        drop = [c for c in frame.columns if c == self.geometry_name or c in self.extra]
        if drop:
            frame = frame.drop(columns=drop)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if table.num_rows != len(frame):  # no property column left: pyarrow cannot know the row count
            table = pa.table({"_": pa.nulls(len(frame))}).drop_columns(["_"])
        if not len(frame):
            table = table.cast(_empty_types(table.schema, self.schema))
        for name, values in self.extra.items():
            table = table.append_column(name, _arrow_column(values))
        return table.append_column("geometry", pa.array(self.wkb(), type=pa.binary()))


def pandas_column(values: Any) -> Any:
    if isinstance(values, np.ndarray) and values.ndim == 2:
        rows = np.empty(len(values), dtype=object)
        rows[:] = list(values)
        return rows
    return values


def _empty_types(schema: Any, source: Any) -> Any:
    """Types for the columns of an empty batch, which pandas leaves null: the file's, and string for what is still
    null (object columns hold strings; GDAL cannot create a null field)."""
    pa = require("pyarrow", "features")
    fields = [source.field(f.name) if source is not None and f.name in source.names else f for f in schema]
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in fields])


def _arrow_column(values: Any) -> Any:
    pa = require("pyarrow", "features")
    if isinstance(values, np.ndarray) and values.ndim == 2:
        n, k = values.shape
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).reshape(-1)))
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array(list(values), type=None if len(values) else pa.string())  # empty: a string property
    return pa.array(values)


class FeatureReader:
    """Batches (:class:`FeatureBatch`) of a GeoDataFrame or a file; ``crs``, ``geometry_type`` and ``total``."""

    def __init__(self, batches: Iterator[FeatureBatch], crs: Any, geometry_type: str | Callable[[], str],
                 total: int | None, closer: Any = None) -> None:
        self._batches = batches
        self.crs = crs
        self._geometry_type = geometry_type
        self.total = total
        self._closer = closer

    @property
    def geometry_type(self) -> str:
        """The layer's geometry type (``Point``, ``MultiPolygon``...), or ``Unknown``; worked out on first use."""
        if callable(self._geometry_type):
            self._geometry_type = self._geometry_type()
        return self._geometry_type

    def __iter__(self) -> Iterator[FeatureBatch]:
        return self._batches

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
            self._closer = None


def _crs(value: Any) -> Any:
    if value is None:
        return None
    from pyproj import CRS

    return CRS.from_user_input(value)


def _features_crs(declared: Any, given: Any, what: str) -> Any:
    """The features' own CRS, else ``given``; a ``given`` CRS that contradicts the declared one is an error (it
    never reprojects, so it would be ignored)."""
    declared, given = _crs(declared), _crs(given)
    if declared is not None and given is not None and declared != given:
        raise InputError(
            f"{what} declare{'s' if what != 'the features' else ''} the CRS {declared.to_string()}, but features_crs "
            f"(--features-crs) says {given.to_string()}; it only sets the CRS of features that have none (it never "
            "reprojects): leave it out, or fix the file's CRS (e.g. ogr2ogr -a_srs)"
        )
    return declared if declared is not None else given


def open_features(
    features: Any, *, batch_size: int = 65_536, layer: str | int | None = None, crs: Any = None
) -> FeatureReader:
    """Read a GeoDataFrame, or a file pyogrio (GDAL) or pyarrow (GeoParquet) opens, in batches.

    ``crs`` sets the CRS of features that have none (it never reprojects).
    """
    gpd = require("geopandas", "features")
    step = max(1, batch_size)
    if crs is not None:
        parse_crs(crs)  # an unknown CRS is a clear error here, not a traceback from pyproj later
    if isinstance(features, gpd.GeoDataFrame):
        gdf = features
        if gdf.crs is None and crs is not None:
            gdf = gdf.set_crs(crs)
        _features_crs(gdf.crs, crs, "the features")
        name = gdf.geometry.name
        batches = (FeatureBatch(gdf.iloc[i:i + step], gdf.crs, geometry=gdf.geometry.iloc[i:i + step],
                                geometry_name=name) for i in range(0, max(len(gdf), 1), step))
        return FeatureReader(batches, gdf.crs, lambda: _geometry_type(gdf), len(gdf))
    if not isinstance(features, (str, os.PathLike)):
        raise InputError(
            f"cannot read features from a {type(features).__name__}; pass a GeoDataFrame or a vector file path "
            "(GeoPackage, GeoParquet, GeoJSON, FlatGeobuf, Shapefile)"
        )
    path = str(features)
    if not path.startswith(("/vsi", "http://", "https://", "s3://")) and not os.path.exists(path):
        raise SourceNotFoundError(f"features file not found: {path}; check the path")
    if Path(path).suffix.lower() in (".parquet", ".geoparquet"):
        if layer is not None:
            raise InputError(f"{path} is GeoParquet, which holds one layer; leave out layer= (--layer)")
        return _open_parquet(path, step, crs)
    return _open_ogr(path, step, layer, crs)


def _geometry_type(gdf: Any) -> str:
    types = {t for t in gdf.geom_type.dropna().unique() if t}
    if len(types) == 1:
        return types.pop()
    for kind in ("Point", "LineString", "Polygon"):
        if types == {kind, f"Multi{kind}"}:
            return f"Multi{kind}"
    return "Unknown"


def _open_parquet(path: str, batch_size: int, crs: Any) -> FeatureReader:
    pq = require("pyarrow.parquet", "features")
    pf = pq.ParquetFile(path)
    meta = (pf.schema_arrow.metadata or {}).get(b"geo")
    if meta is None:
        raise InputError(f"{path} is a Parquet file without GeoParquet 'geo' metadata; write it with "
                         "GeoDataFrame.to_parquet, or convert it with ogr2ogr")
    geo = json.loads(meta)
    gcol = geo["primary_column"]
    info = geo["columns"][gcol]
    if info.get("encoding", "WKB").upper() != "WKB":
        raise InputError(f"{path}: geometry encoding {info['encoding']!r} is not supported; write it as WKB")
    file_crs = _features_crs(info.get("crs", "OGC:CRS84") if "crs" in info else "OGC:CRS84", crs, path)
    types = info.get("geometry_types") or []
    gtype = types[0].replace(" Z", "") if len(types) == 1 else "Unknown"

    def batches() -> Iterator[FeatureBatch]:
        for rb in _or_empty(pf.iter_batches(batch_size=batch_size), pf.schema_arrow):
            wkb = rb.column(gcol).to_numpy(zero_copy_only=False)
            rb = rb.drop_columns([gcol])
            yield FeatureBatch(rb.to_pandas(), file_crs, wkb=wkb, schema=rb.schema)

    return FeatureReader(batches(), file_crs, gtype, pf.metadata.num_rows, getattr(pf, "close", None))


def _open_ogr(path: str, batch_size: int, layer: str | int | None, crs: Any) -> FeatureReader:
    pyogrio = require("pyogrio", "features")
    try:
        info = pyogrio.read_info(path, layer=layer)
        ctx = pyogrio.open_arrow(path, layer=layer, batch_size=batch_size, use_pyarrow=True)
        meta, reader = ctx.__enter__()
    except Exception as exc:
        raise InputError(f"GDAL cannot read {path} as vector features: {exc}") from None
    gcol = meta.get("geometry_name") or "wkb_geometry"
    file_crs = _features_crs(meta.get("crs"), crs, path)
    total = int(info["features"]) if info.get("features", -1) >= 0 else None

    def batches() -> Iterator[FeatureBatch]:
        for rb in _or_empty(reader, reader.schema):
            if gcol in rb.schema.names:
                wkb = rb.column(gcol).to_numpy(zero_copy_only=False)
                rb = rb.drop_columns([gcol])
            else:
                wkb = np.full(rb.num_rows, None, dtype=object)
            yield FeatureBatch(rb.to_pandas(), file_crs, wkb=wkb, schema=rb.schema)

    return FeatureReader(batches(), file_crs, meta.get("geometry_type") or "Unknown", total,
                         lambda: ctx.__exit__(None, None, None))


def _or_empty(batches: Any, schema: Any) -> Iterator[Any]:
    """The record batches, or one empty batch of ``schema`` when there are none: it carries the columns through, so
    an empty input gives an empty output with the input's columns plus the predicted ones."""
    empty = True
    for rb in batches:
        empty = False
        yield rb
    if empty:
        pa = require("pyarrow", "features")
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _geo_metadata(crs: Any, geometry_name: str) -> bytes:
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": []}
    column["crs"] = None if crs is None else crs.to_json_dict()
    return json.dumps({"version": "1.0.0", "primary_column": geometry_name,
                       "columns": {geometry_name: column}}).encode()


def _as_batch(item: Any) -> FeatureBatch:
    if isinstance(item, FeatureBatch):
        return item
    return FeatureBatch(item, item.crs, geometry=item.geometry, geometry_name=item.geometry.name)


def write_features(
    path: str | os.PathLike,
    batches: Iterator[Any],
    *,
    crs: Any = None,
    geometry_type: str = "Unknown",
    driver: str | None = None,
    layer: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write batches (GeoDataFrames or :class:`FeatureBatch`) to one file; the schema (and, unless given, the CRS)
    is the first batch's.

    Returns the final path."""
    dst = check_output_path(path, overwrite)
    driver = driver_for(dst, driver)
    check_driver(dst, driver, layer)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    tmp = tmpdir / dst.name
    try:
        if driver == "Parquet":
            _write_parquet(tmp, batches, crs)
        else:
            _write_ogr(tmp, batches, crs, geometry_type, driver, layer)
        for f in sorted(tmpdir.iterdir()):
            os.replace(f, dst.parent / f.name)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return dst


def _write_parquet(tmp: Path, batches: Iterator[Any], crs: Any) -> None:
    pq = require("pyarrow.parquet", "features")
    writer = None
    try:
        for item in batches:
            batch = _as_batch(item)
            table = batch.to_arrow()
            if writer is None:
                crs = batch.crs if crs is None else crs
                schema = table.schema.with_metadata({b"geo": _geo_metadata(crs, "geometry")})
                writer = pq.ParquetWriter(str(tmp), schema)
            writer.write_table(table.cast(writer.schema, safe=False) if table.schema != writer.schema else table)
        if writer is None:
            raise InputError("there are no features to write; the input is empty")
    finally:
        if writer is not None:
            writer.close()


def _check_field_names(batch: FeatureBatch, driver: str) -> None:
    """Predicted names GDAL would rename or merge: too long for a Shapefile, or equal but for case to another field
    (GDAL's writers compare field names without case)."""
    long = [name for name in batch.extra if len(name.encode()) > 10]
    if driver == "ESRI Shapefile" and long:
        raise OutputError(f"Shapefile field names have at most 10 characters, so GDAL would rename {long}; give "
                          "shorter names (NAME=OUTPUT:DTYPE), or write GeoPackage or GeoParquet")
    seen: dict[str, str] = {c.lower(): c for c in batch.columns if c not in batch.extra}
    for name in batch.extra:
        other = seen.setdefault(name.lower(), name)
        if other != name:
            raise OutputError(f"the predicted property {name!r} and the field {other!r} differ only in case, which "
                              f"GDAL's {driver} writer does not tell apart; rename the property (NAME=OUTPUT:DTYPE), "
                              "or write GeoParquet")


def _write_ogr(tmp: Path, batches: Iterator[Any], crs: Any, geometry_type: str, driver: str,
               layer: str | None) -> None:
    pa = require("pyarrow", "features")
    pyogrio = require("pyogrio", "features")
    it = iter(batches)
    first = next(it, None)
    if first is None:
        raise InputError("there are no features to write; the input is empty")
    first = _as_batch(first)
    _check_field_names(first, driver)
    table = first.to_arrow()
    schema = table.schema
    crs = first.crs if crs is None else crs
    failure: list[BaseException] = []

    def stream() -> Iterator[Any]:
        try:
            yield from table.to_batches()
            for item in it:
                t = _as_batch(item).to_arrow()
                yield from (t.cast(schema, safe=False) if t.schema != schema else t).to_batches()
        except BaseException as exc:
            failure.append(exc)
            raise

    reader = pa.RecordBatchReader.from_batches(schema, stream())
    kwargs: dict[str, Any] = {"layer": layer} if layer else {}
    if driver == "FlatGeobuf":
        kwargs["layer_options"] = {"SPATIAL_INDEX": "NO"}  # the index reorders features; keep the input order
    if driver == "GeoJSON" and crs is not None:  # RFC 7946: WGS84 lon/lat, which GDAL reprojects to
        kwargs["layer_options"] = dict(GEOJSON_OPTIONS)
    try:
        pyogrio.write_arrow(reader, str(tmp), driver=driver, geometry_name="geometry",
                            geometry_type=geometry_type or "Unknown", crs=None if crs is None else crs.to_wkt(),
                            **kwargs)
    except Exception as exc:
        if failure:
            raise failure[0] from None
        if isinstance(exc, TilecastError):
            raise
        raise OutputError(f"GDAL could not write {driver}: {exc}") from None
    if failure:
        raise failure[0]
