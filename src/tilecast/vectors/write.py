"""Streaming vector sinks, chosen by extension: GeoParquet, GeoPackage, FlatGeobuf, GeoJSON, Shapefile.

Features arrive in batches while tiles finish and leave memory at once. GeoParquet is written with pyarrow's
``ParquetWriter``, one row group per batch of rows, with the GeoParquet ``geo`` metadata. The GDAL formats take one
Arrow stream through ``pyogrio.write_arrow`` on a writer thread, fed from a bounded queue, so GDAL writes features as
they come (in transactions, for GeoPackage). Every output goes to a temporary file next to the target and is renamed
when complete, as rasters are; nothing is overwritten without ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import OutputExistsError
from .errors import VectorFormatError

__all__ = ["GEOJSON_OPTIONS", "VECTOR_FORMATS", "VectorWriter", "box_wkb", "is_vector_path", "vector_driver"]

VECTOR_FORMATS: dict[str, str] = {
    ".parquet": "GeoParquet",
    ".geoparquet": "GeoParquet",
    ".gpkg": "GPKG",
    ".fgb": "FlatGeobuf",
    ".geojson": "GeoJSON",
    ".shp": "ESRI Shapefile",
}
"""Output extensions and the format each one writes."""

GEOJSON_DECIMALS = 9
"""Decimals of the lon/lat coordinates written to GeoJSON."""
GEOJSON_OPTIONS = {"RFC7946": "YES", "COORDINATE_PRECISION": str(GEOJSON_DECIMALS)}
"""GDAL's GeoJSON layer options for an RFC 7946 file (see :meth:`VectorWriter._layer_options`); every GeoJSON
tilecast writes (vectors, predicted features) uses them."""

_SHP_PARTS = (".shp", ".shx", ".dbf", ".prj", ".cpg")
_DONE = object()


def vector_driver(path: str | os.PathLike) -> str:
    """The format for ``path``'s extension, or a :class:`VectorFormatError` naming the ones tilecast writes."""
    ext = Path(path).suffix.lower()
    if ext not in VECTOR_FORMATS:
        raise VectorFormatError(
            f"{path}: {ext or 'no extension'} is not a vector format tilecast writes; use one of "
            f"{', '.join(VECTOR_FORMATS)}"
        )
    return VECTOR_FORMATS[ext]


def is_vector_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a vector output (the CLI dispatches ``predict -o`` on this)."""
    return Path(path).suffix.lower() in VECTOR_FORMATS


_BOX_WKB = np.dtype([("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (5, 2))])


def box_wkb(x: np.ndarray, y: np.ndarray) -> Any:
    """WKB polygons (a pyarrow binary array) from ``(n, 5)`` ring coordinates, built in one numpy buffer.

    Byte for byte what ``shapely.to_wkb`` writes for those polygons (little-endian, 2-D), without a shapely object
    per feature: boxes are most of a detector's output, and this was the hot spot of writing them.
    """
    pa = require("pyarrow", "features")
    n = len(x)
    rec = np.zeros(n, _BOX_WKB)
    rec["order"], rec["type"], rec["rings"], rec["points"] = 1, 3, 1, 5
    rec["xy"][:, :, 0] = x
    rec["xy"][:, :, 1] = y
    offsets = np.arange(0, (n + 1) * _BOX_WKB.itemsize, _BOX_WKB.itemsize, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(rec.view(np.uint8))])


def _outputs(path: Path) -> list[Path]:
    if path.suffix.lower() == ".shp":
        return [path.with_suffix(s) for s in _SHP_PARTS]
    return [path]


class VectorWriter:
    """Write features in batches: ``write(geoms, columns)``, then ``close()`` (publishes) or ``abort()``.

    ``geoms`` are shapely geometries in ``crs``; ``fields`` maps each attribute to its numpy dtype (``object`` for
    strings). ``geometry_type`` is the declared type (``Polygon``, or ``Unknown`` for mixed polygons).
    """

    def __init__(self, path: str | os.PathLike, crs: Any, fields: Mapping[str, Any], *, overwrite: bool = False,
                 geometry_type: str = "Polygon", layer: str | None = None, row_group: int = 65536) -> None:
        self.path = Path(path)
        self.driver = vector_driver(self.path)
        if self.driver == "ESRI Shapefile":  # GDAL names a shapefile's parts in lower case (OUT.SHP: OUT.shp, ...)
            self.path = self.path.with_suffix(".shp")
        if not overwrite and any(p.exists() for p in _outputs(self.path)):
            raise OutputExistsError(f"{self.path} exists; pass overwrite=True (--overwrite) to replace it")
        if any(p.is_dir() for p in _outputs(self.path)):
            from ..errors import OutputError

            raise OutputError(f"{self.path} is a folder, not a file that overwrite could replace; choose another "
                              "output path")
        self.pa = require("pyarrow", "features")
        self._pyogrio = None if self.driver == "GeoParquet" else require("pyogrio", "features")
        self.crs = crs
        self.fields = dict(fields)
        self.geometry_type = geometry_type
        self.layer = layer or self.path.stem
        self.row_group = row_group
        self.count = 0
        self._pending: list[Any] = []
        self._pending_rows = 0
        self._tmpdir = self.path.parent / f".{self.path.name}.tmp-{os.getpid()}-{id(self):x}"
        try:
            self._tmpdir.mkdir(parents=True, exist_ok=False)
        except OSError as exc:
            from ..errors import OutputError

            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}; choose an output in a folder you "
                              "can write to (-o)") from None
        self.tmp = self._tmpdir / self.path.name
        self.schema = self._schema()
        self._parquet: Any = None
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=4)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        if self.driver == "GeoParquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(str(self.tmp), self.schema, compression="zstd")
        else:
            self._thread = threading.Thread(target=self._ogr, name="tilecast-vector-writer", daemon=True)
            self._thread.start()

    def _schema(self) -> Any:
        pa = self.pa
        types = {"i": pa.int32(), "u": pa.int32(), "f": pa.float64(), "b": pa.bool_(), "O": pa.string()}
        cols = [pa.field("geometry", pa.binary(), metadata={b"ARROW:extension:name": b"geoarrow.wkb"})]
        for name, dtype in self.fields.items():
            kind = np.dtype(dtype).kind
            typ = {np.float32: pa.float32(), np.int64: pa.int64()}.get(np.dtype(dtype).type, types[kind])
            cols.append(pa.field(name, typ))
        meta = None
        if self.driver == "GeoParquet":
            meta = {b"geo": json.dumps(self._geo_metadata()).encode()}
        return pa.schema(cols, metadata=meta)

    def _geo_metadata(self) -> dict[str, Any]:
        types = ["Polygon"] if self.geometry_type == "Polygon" else ["Polygon", "MultiPolygon"]
        col: dict[str, Any] = {"encoding": "WKB", "geometry_types": types}
        col["crs"] = json.loads(self.crs.to_json()) if self.crs is not None else None
        return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": col}}

    def write(self, geoms: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
        """Append features; they are written once ``row_group`` rows have gathered."""
        import shapely

        if len(geoms) == 0:
            return
        self.write_wkb(self.pa.array(shapely.to_wkb(geoms), type=self.pa.binary()), columns)

    def write_wkb(self, wkb: Any, columns: Mapping[str, np.ndarray]) -> None:
        """Append features whose geometry is already WKB (a pyarrow binary array)."""
        if len(wkb) == 0:
            return
        pa = self.pa
        arrays = [wkb]
        for name, field in zip(self.fields, self.schema.types[1:], strict=True):
            col = np.asarray(columns[name])
            arrays.append(pa.array(col.tolist() if col.dtype == object else col, type=field))
        self._pending.append(pa.record_batch(arrays, schema=self.schema))
        self._pending_rows += len(wkb)
        self.count += len(wkb)
        if self._pending_rows >= self.row_group:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = self.pa.Table.from_batches(self._pending, schema=self.schema).combine_chunks()
        self._pending, self._pending_rows = [], 0
        if self._parquet is not None:
            self._parquet.write_table(table, row_group_size=max(len(table), 1))
            return
        for batch in table.to_batches():
            while self._thread is not None and self._thread.is_alive():
                try:
                    self._queue.put(batch, timeout=0.1)
                    break
                except queue.Full:
                    continue
        if self._error is not None:
            raise self._error

    def _batches(self) -> Iterator[Any]:
        while True:
            item = self._queue.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def _ogr(self) -> None:
        pyogrio = self._pyogrio
        try:
            reader = self.pa.RecordBatchReader.from_batches(self.schema, self._batches())
            crs = self.crs.to_wkt() if self.crs is not None else None
            pyogrio.write_arrow(reader, str(self.tmp), layer=self.layer, driver=self.driver, crs=crs,
                                geometry_name="geometry", geometry_type=self.geometry_type,
                                layer_options=self._layer_options())
        except BaseException as exc:  # re-raised on the calling thread
            self._error = exc

    @property
    def reprojects(self) -> bool:
        """GeoJSON moves the geometry to WGS84 lon/lat itself (:meth:`_layer_options`)."""
        return self.driver == "GeoJSON" and self.crs is not None

    def _layer_options(self) -> dict[str, str] | None:
        """GeoJSON is RFC 7946: GDAL reprojects to WGS84 lon/lat (polygons wound counter-clockwise, split at the
        antimeridian) and writes no legacy ``crs`` member, which most readers ignore (projected coordinates read as
        degrees put every feature in the wrong place). Areas were measured before, in ``crs``. 9 decimals (0.1 mm),
        not RFC 7946's default 7 (1 cm), keep the pixel edges of a drone image's class map where they are."""
        if self.reprojects:
            return dict(GEOJSON_OPTIONS)
        return None

    def close(self) -> Path:
        """Finish, then rename the temporary file(s) over ``path``."""
        try:
            self._flush()
            if self._parquet is not None:
                self._parquet.close()
            else:
                self._queue.put(_DONE)
                if self._thread is not None:
                    self._thread.join()
                if self._error is not None:
                    raise self._error
            for target in _outputs(self.path):
                written = self._tmpdir / target.name
                if written.exists():
                    os.replace(written, target)
                elif target.exists():  # a sidecar the old output had but this one does not
                    target.unlink()
        except BaseException:
            self.abort()
            raise
        shutil.rmtree(self._tmpdir, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Stop and leave nothing behind (an existing output is kept)."""
        if self._parquet is not None:
            with contextlib.suppress(Exception):  # the file is being thrown away
                self._parquet.close()
            self._parquet = None
        if self._thread is not None and self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._queue.put_nowait(VectorFormatError("the run was aborted"))
                except queue.Full:
                    with contextlib.suppress(queue.Empty):
                        self._queue.get_nowait()
                self._thread.join(timeout=0.05)
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> VectorWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
