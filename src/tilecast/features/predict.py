"""Earth Engine's ``model.predictProperties``: each feature is one instance, predictions merge into its properties."""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .._extras import require
from ..errors import InputError, SpecError
from ..runners.engine import Engine, Local, resolve_engine
from ..runtimes.base import Signature, run_split, streams_of
from ..spec import replace_options
from .io import LIST_DRIVERS, FeatureBatch, check_output, driver_for, open_features, pandas_column, write_features
from .properties import (
    Column,
    OutputProperty,
    apply_nulls,
    bind_properties,
    choose_layout,
    column_values,
    match_outputs,
    outputs_to_columns,
    parse_output_properties,
)
from .rasters import RasterInputs

__all__ = ["BoundModel", "FeatureProgress", "PropertyOptions", "Runs", "predict_features_file", "predict_properties"]

FeatureCallback = Callable[[int, int | None], None]
"""Called with ``(features_done, features_total or None)``."""


class FeatureProgress:
    """A throttled one-line report on stderr: features done and features per second."""

    def __init__(self, label: str = "predict-features", stream: Any = None, every: float = 0.5) -> None:
        self.label, self.stream, self.every = label, stream or sys.stderr, every
        self.start = time.perf_counter()
        self.last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.perf_counter()
        final = total is not None and done >= total
        if not final and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.start, 1e-9)
        of = f"/{total} ({100.0 * done / total if total else 100.0:5.1f}%)" if total is not None else ""
        self.stream.write(f"{self.label}: {done}{of} features, {rate:,.0f} features/s\n")
        self.stream.flush()


@runtime_checkable
class Runs(Protocol):
    """Anything with a signature that runs a batch: a tilecast runtime (``close`` is optional here)."""

    signature: Signature

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


@runtime_checkable
class BoundModel(Protocol):
    """A :class:`tilecast.Model`: a runtime and the spec whose output bands and input properties are defaults."""

    runtime: Runs
    spec: Any


@dataclass(frozen=True)
class PropertyOptions:
    """What :func:`predict_properties` sends and keeps; its keywords are checked against these fields."""

    output_properties: Any = None
    input_properties: Sequence[str] | None = None
    input_type_override: Mapping[str, Any] | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = None
    sample: Any = None
    bands: Sequence[str | int] | None = None
    stats: Sequence[str] | None = None
    all_touched: bool = False
    patch_size: int | Sequence[int] | None = None
    nulls: str = "error"
    fill_value: Any = 0
    layout: str = "auto"

    @classmethod
    def create(cls, base: PropertyOptions | None = None, **options: Any) -> PropertyOptions:
        """``base`` (or the defaults) with ``options`` replaced; an unknown keyword is a clear error."""
        return replace_options(base or cls(), options, "unknown option(s) {unknown}; predict_properties takes {known}")


class _Predictor:
    """Everything decided once (inputs, layout, output mapping); then one call per batch."""

    def __init__(self, model: Any, opts: PropertyOptions, array_columns: str, geometry_type: Callable[[], str]
                 ) -> None:
        from ..spec import parse_dtype

        if isinstance(model, BoundModel):
            runtime, spec = model.runtime, model.spec
        elif isinstance(model, Runs):
            runtime, spec = model, None
        else:
            raise SpecError(f"expected a tilecast Model or Runtime, got {type(model).__name__}")
        self.runtime: Runs = runtime
        self.signature: Signature = runtime.signature
        streams = streams_of(runtime)
        self.slices = ThreadPoolExecutor(streams - 1, thread_name_prefix="tilecast-model") if streams > 1 else None
        """Threads for the slices of each batch beyond the first (see :func:`~tilecast.runtimes.base.run_split`)."""
        output_properties, input_properties = opts.output_properties, opts.input_properties
        if output_properties is None and spec is not None and spec.output_bands:
            output_properties = [OutputProperty(b.name, b.dtype, b.dimensions) for b in spec.output_bands]
        self.outputs = parse_output_properties(output_properties)
        self.sources = match_outputs(self.outputs, self.signature)
        if input_properties is None and spec is not None and spec.input_properties:
            input_properties = spec.input_properties
        self.overrides = {k: _parse_in_dtype(v, k, parse_dtype) for k, v in (opts.input_type_override or {}).items()}
        if not self.overrides and spec is not None:
            self.overrides = dict(spec.input_type_override)
        self.shapes = {k: tuple(int(d) for d in v) for k, v in (opts.input_shapes or {}).items()}
        if not self.shapes and spec is not None:
            self.shapes = dict(spec.input_shapes)
        nulls, fill_value = opts.nulls, opts.fill_value
        if nulls not in ("skip", "fill", "error"):
            raise SpecError(f"nulls must be 'skip', 'fill' or 'error', got {nulls!r}")
        if array_columns not in ("list", "split"):
            raise SpecError(f"array_columns must be 'list' or 'split', got {array_columns!r}")
        self.nulls, self.fill_value, self.array_columns = nulls, fill_value, array_columns
        self.rasters = RasterInputs.choose(opts.sample, geometry_type, bands=opts.bands, stats=opts.stats,
                                           all_touched=opts.all_touched, patch_size=opts.patch_size,
                                           fill_value=fill_value)
        self.user_named = {*(opts.input_type_override or {}), *(opts.input_shapes or {})}
        self.requested = list(input_properties) if input_properties is not None else None
        self.layout_param = opts.layout
        self.names: list[str] | None = None
        self.layout = ""

    def _choose_inputs(self, columns: Sequence[str]) -> None:
        derived = self.rasters.names if self.rasters is not None else []
        available = [*derived, *columns]
        if self.requested is not None:
            names = self.requested
        elif derived:
            names = derived
        elif self.signature.inputs and set(self.signature.input_names) <= set(columns):
            names = self.signature.input_names
        else:
            names = list(columns)
        both = [n for n in names if n in derived and n in columns]
        if both:
            raise InputError(
                f"input propert{'y' if len(both) == 1 else 'ies'} {', '.join(map(repr, both))} is both a column of "
                "the features and a property read from the raster; name the raster (sample={'NAME': raster}, "
                "--sample NAME=RASTER) so that its properties are NAME_BAND, or rename the column"
            )
        missing = [n for n in names if n not in available]
        if missing:
            raise InputError(
                f"missing input propert{'y' if len(missing) == 1 else 'ies'} {missing}: the features have "
                f"{list(columns)}" + (f" and the rasters give {derived}" if derived else "")
                + "; pass input_properties (--input-property) naming existing properties"
            )
        if not names:
            raise InputError("no input properties: the features have no columns besides the geometry; "
                             "pass sample= (--sample RASTER) to derive inputs from a raster")
        unused = sorted(self.user_named - set(names))
        if unused:
            raise InputError(
                f"input_type_override / input_shapes (--input-type-override / --input-shape) name {unused}, which "
                f"the model is not sent; the input properties are {list(names)}: fix the name, or add it to "
                "input_properties (--input-property)"
            )
        self.layout = choose_layout(self.signature, names, self.layout_param)  # type: ignore[arg-type]
        self.names = list(names)

    def _check_output_names(self, geometry_name: str | None) -> None:
        """A property named like the geometry column would replace it (GDAL compares field names without case)."""
        reserved = {"geometry", (geometry_name or "geometry").lower()}
        clash = [p.name for p in self.outputs if p.name.lower() in reserved and not
                 (p.dimensions and self.array_columns == "split")]
        if clash:
            raise SpecError(f"output property {clash[0]!r} would replace the features' geometry column; give it "
                            "another name (NAME=OUTPUT:DTYPE names it apart from the model output, e.g. "
                            f"--output-property pred={clash[0]}:float32)")

    def __call__(self, batch: FeatureBatch) -> dict[str, Any]:
        columns = batch.columns
        n = len(batch)
        if self.names is None:
            self._check_output_names(batch.geometry_name)
        if self.names is None and (n or columns):  # an empty GeoJSON has no columns to check the inputs against
            self._choose_inputs(columns)
        if not n:  # an empty input: no prediction, but the output columns (an empty file keeps its schema)
            return self._merge(self._no_predictions(), None, 0)
        assert self.names is not None
        derived: dict[str, Column] = {}
        if self.rasters is not None and any(name in self.rasters.names for name in self.names):
            geoms = batch.geometry
            empty = np.asarray(geoms.isna() | geoms.is_empty, dtype=bool)
            if empty.any() and self.nulls == "error":
                rows = batch.index[np.flatnonzero(empty)[:5]].tolist()
                raise InputError(
                    f"{int(empty.sum())} feature(s) have empty or missing geometry (e.g. index {rows}), so no "
                    "raster values can be read for them; remove them, or pass nulls='skip' (--nulls skip)"
                )
            derived = {c.name: c for c in self.rasters.compute(geoms, strict=self.nulls == "error")}
        cols = []
        for name in self.names:
            if name in derived:
                col = derived[name]
                if name in self.overrides:
                    col = Column(name, col.values.astype(self.overrides[name]), col.nulls)
            else:
                col = column_values(batch.frame[name], name, self.overrides.get(name), self.shapes.get(name))
            cols.append(col)
        keep = apply_nulls(cols, self.nulls, self.fill_value, ids=batch.index)  # type: ignore[arg-type]
        rows = None if keep.all() else np.flatnonzero(keep)
        m = n if rows is None else len(rows)
        if m:
            batch = bind_properties(cols, self.signature, self.layout, rows)
            predicted = outputs_to_columns(run_split(self.runtime, batch, self.slices), self.outputs, self.sources, m)
        else:
            predicted = self._no_predictions()
        return self._merge(predicted, rows, n)

    def _no_predictions(self) -> dict[str, np.ndarray]:
        """Zero rows of each output property; array properties as wide as the model's signature says (else 1),
        so that split columns match those of a non-empty run."""
        shapes = {o.name: o.shape for o in self.signature.outputs}
        out = {}
        for p in self.outputs:
            if p.dimensions == 0:
                out[p.name] = np.zeros(0, dtype=p.dtype)
                continue
            tail = (shapes.get(self.sources[p.name]) or ())[1:]
            width = int(np.prod(tail)) if tail and None not in tail else 1
            out[p.name] = np.zeros((0, width), dtype=p.dtype)
        return out

    def _merge(self, predicted: dict[str, np.ndarray], rows: np.ndarray | None, n: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for p in self.outputs:
            arr = predicted[p.name]
            if p.dimensions and self.array_columns == "split":
                for j in range(arr.shape[1]):
                    out[f"{p.name}_{j}"] = _with_nulls(arr[:, j], rows, n)
            elif p.dimensions and rows is None:
                out[p.name] = arr  # 2-D: a list column when written or returned
            elif p.dimensions:
                items = np.empty(len(arr), dtype=object)
                items[:] = list(arr)
                out[p.name] = _with_nulls(items, rows, n)
            else:
                out[p.name] = _with_nulls(arr, rows, n)
        return out

    def close(self) -> None:
        if self.rasters is not None:
            self.rasters.close()
        if self.slices is not None:
            self.slices.shutdown()


def _parse_in_dtype(value: Any, name: str, parse_dtype: Callable[..., np.dtype]) -> np.dtype:
    if value is str or (isinstance(value, str) and value.lower() in ("str", "string")):
        return np.dtype(object)
    if value is bool or (isinstance(value, str) and value.lower() in ("bool", "boolean")):
        return np.dtype(bool)
    return parse_dtype(value, f"input_type_override[{name!r}]")


def _with_nulls(values: np.ndarray, rows: np.ndarray | None, n: int) -> Any:
    """Spread the predicted rows over ``n`` features; the others are null (NaN, pandas NA or None)."""
    if rows is None:
        return values
    import pandas as pd

    if values.dtype.kind == "f":
        full = np.full(n, np.nan, dtype=values.dtype)
        full[rows] = values
        return full
    if values.dtype.kind in "iub":
        data = np.zeros(n, dtype=values.dtype)
        data[rows] = values
        mask = np.ones(n, dtype=bool)
        mask[rows] = False
        return pd.arrays.BooleanArray(data, mask) if values.dtype.kind == "b" else \
            pd.arrays.IntegerArray(data, mask)
    full = np.full(n, None, dtype=object)
    full[rows] = values
    return full


_DOC_PARAMS = """
    ``output_properties``: the predicted properties (required unless the model's spec declares output bands), e.g.
    ``{"crop": "int32"}``, ``["crop=label:int32", "probs=probabilities:float32:1"]``. A property reads the model
    output of its name, else the next unused output.
    ``input_properties``: the properties sent to the model, in order (default: the raster-derived ones when
    ``sample`` is given, else the model's input names, else every column).
    ``input_type_override`` / ``input_shapes``: as in Earth Engine; array-valued properties are lists or arrays.
    ``sample``: a raster (or list, or ``{prefix: raster}``) to derive inputs from: pixel values at points
    (``{band}``), zonal ``stats`` over polygons (``{band}_{stat}``; ``all_touched`` or pixel-centre rule), or a
    ``patch_size`` window centred on each feature (``patch``, ``(H, W, C)``). Features are reprojected to each
    raster's CRS.
    ``nulls``: ``"error"`` (default), ``"fill"`` (with ``fill_value``) or ``"skip"`` (no prediction: null outputs).
    ``array_columns``: array outputs as one list column (``"list"``) or one column per element (``"split"``).
    ``layout``: ``"named"`` (one input per property, Earth Engine), ``"stacked"`` (one ``(N, F)`` input, e.g.
    scikit-learn converted with skl2onnx) or ``"auto"`` (from the model's signature).
"""


def _iter_predictions(
    model: Any, reader: Any, opts: PropertyOptions, progress: FeatureCallback | None, array_columns: str,
) -> Iterator[Any]:
    batches = iter(reader)
    first = next(batches, None)

    def geometry_type() -> str:  # from the file's metadata, else from the first batch's geometries
        gtype = reader.geometry_type
        if gtype == "Unknown" and first is not None:
            types = {t.replace("Multi", "") for t in first.geometry.geom_type.dropna().unique()}
            gtype = types.pop() if len(types) == 1 else gtype
        return gtype

    try:
        predictor = _Predictor(model, opts, array_columns, geometry_type)
    except BaseException:
        reader.close()
        raise
    done = 0
    try:
        for batch in itertools.chain([first] if first is not None else [], batches):
            batch.extra = predictor(batch)
            done += len(batch)
            if progress is not None:
                progress(done, reader.total)
            yield batch
    finally:
        predictor.close()
        reader.close()


def _concat(parts: list[Any]) -> Any:
    """Join one output's batches; batches with skipped features hold nullable arrays or object rows."""
    import pandas as pd

    if all(isinstance(p, np.ndarray) for p in parts) and len({(p.ndim, p.dtype) for p in parts}) == 1:
        return np.concatenate(parts)
    if any(isinstance(p, np.ndarray) and (p.ndim == 2 or p.dtype == object) for p in parts):
        return np.concatenate([pandas_column(p) if p.ndim == 2 else np.asarray(p, dtype=object) for p in parts])
    return pd.concat([pd.Series(p) for p in parts], ignore_index=True).array


def _local(engine: Engine | str | None) -> None:
    if not isinstance(resolve_engine(engine), Local):
        raise SpecError("predict_properties runs on this machine (batches stream through the model in order); "
                        "pass engine=tilecast.Local() or leave engine out")


def predict_properties(
    model: Any,
    features: Any,
    *,
    options: PropertyOptions | None = None,
    batch_size: int = 65_536,
    features_crs: Any = None,
    layer: str | int | None = None,
    progress: FeatureCallback | None = None,
    engine: Engine | str | None = None,
    array_columns: str = "list",
    **params: Any,
) -> Any:
    """Predict properties for every feature of a GeoDataFrame or vector file; returns a new GeoDataFrame with the
    predictions merged into each feature's properties. ``model`` is a :class:`tilecast.Model` or any runtime.
    ``params`` are :class:`PropertyOptions` fields (or pass ``options``); ``engine``: only ``tilecast.Local()``.
    """
    _local(engine)
    opts = PropertyOptions.create(options, **params)
    pd = require("pandas", "features")
    gpd = require("geopandas", "features")
    reader = open_features(features, batch_size=batch_size, layer=layer, crs=features_crs)
    batches = _iter_predictions(model, reader, opts, progress, array_columns)
    if isinstance(features, gpd.GeoDataFrame):  # one copy of the input, predicted columns added once
        extras = [b.extra for b in batches]
        out = features.copy() if reader.crs == features.crs else features.set_crs(reader.crs)
        for name in extras[0] if extras else ():
            parts = [e[name] for e in extras]
            values = parts[0] if len(parts) == 1 else _concat(parts)
            out[name] = pandas_column(values)
        return out
    parts = [b.to_geodataframe() for b in batches]
    if not parts:
        return gpd.GeoDataFrame()
    if len(parts) == 1:
        return parts[0]
    return gpd.GeoDataFrame(pd.concat(parts), geometry=parts[0].geometry.name, crs=parts[0].crs)


predict_properties.__doc__ = (predict_properties.__doc__ or "") + _DOC_PARAMS


def predict_features_file(
    model: Any,
    features: Any,
    output: str | os.PathLike,
    *,
    overwrite: bool = False,
    driver: str | None = None,
    output_layer: str | None = None,
    array_columns: str | None = None,
    batch_size: int = 65_536,
    layer: str | int | None = None,
    features_crs: Any = None,
    progress: FeatureCallback | None = None,
    **params: Any,
) -> Path:
    """Stream features from a file (or GeoDataFrame) through the model into ``output``, batch by batch.

    GeoParquet is written one row group per batch. ``array_columns`` defaults to list columns where the format
    stores them (GeoParquet, GeoJSON) and one column per element elsewhere. Other parameters as
    :func:`predict_properties`.
    """
    opts = PropertyOptions.create(**params)
    check_output(output, overwrite, features, opts.sample)
    drv = driver_for(output, driver)
    if array_columns is None:
        array_columns = "list" if drv in LIST_DRIVERS else "split"
    elif array_columns == "list" and drv not in LIST_DRIVERS:
        raise SpecError(f"{drv} cannot store list columns; use array_columns='split' (--array-columns split) or "
                        "write GeoParquet or GeoJSON")
    reader = open_features(features, batch_size=batch_size, layer=layer, crs=features_crs)
    batches = _iter_predictions(model, reader, opts, progress, array_columns)
    return write_features(output, batches, geometry_type=reader.geometry_type, driver=drv, layer=output_layer,
                          overwrite=overwrite)
