"""Drive a prediction to vectors: detectors and instance segmenters to objects, class maps to polygons.

A detector reuses the prediction's :class:`~tilecast.job.Job` steps (read a tile with its halo, group tiles into
batches, pack them into the model's tensors) and replaces only what comes after the model: an output decoder, the
seam-aware merger and a vector sink. A class map goes through the ordinary raster runner into a
:class:`~tilecast.vectors.features.PolygonSink` (strips, local engine) or a
:class:`~tilecast.vectors.features.PolygonChunkSink` (chunks in any order, Dask engine). The Dask engine runs read,
model and decoding as tasks per block of tile rows and feeds the client's merger in plan order, so both engines give
identical features.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ..errors import SpecError
from ..job import Job
from ..plan import Tile
from ..progress import Progress, ProgressCallback
from ..resources import bounded_gdal_cache
from ..runners.engine import DASK_OPTIONS, Dask, Engine, resolve_engine
from ..runtimes.base import metadata_of
from ..sinks.base import OutputProfile
from ..tensors import OutputBinding
from .classmap import polygonize_raster
from .errors import VectorFormatError
from .features import (
    FeatureOutput,
    Features,
    FeatureTarget,
    PolygonChunkSink,
    PolygonSink,
    object_fields,
    polygon_fields,
)
from .merge import Kind, Objects, SeamMerger, TileGrid
from .metadata import DetectorSpec, detector_spec
from .tiles import detect_tiles, kind_of, tile_objects
from .write import VectorWriter

if TYPE_CHECKING:
    from ..prediction import Prediction

__all__ = [
    "CardHolder",
    "MetadataHolder",
    "detector_job",
    "detector_of",
    "polygonize_raster",
    "predict_vectors",
    "to_geodataframe",
]


@runtime_checkable
class CardHolder(Protocol):
    """A model that may carry a model card (a :class:`~tilecast.card.binding.CardBinding`, or None)."""

    card: Any


@runtime_checkable
class MetadataHolder(Protocol):
    """A runtime that exposes its model's metadata (ONNX ``metadata_props``)."""

    metadata: Mapping[str, str]


def detector_of(prediction: Prediction, **overrides: Any) -> DetectorSpec | None:
    """The prediction's detector spec (ONNX metadata, card, then ``overrides``), or None for a raster model."""
    from ..runtimes.scaled import ScaledRuntime

    model = prediction.model
    runtime = model.runtime
    if isinstance(runtime, ScaledRuntime):
        runtime = runtime.runtime
    metadata = metadata_of(runtime)
    props = model.card.card.properties if model.card is not None else {}
    return detector_spec(metadata, props, **overrides)


def detector_job(prediction: Prediction) -> Job:
    """The prediction's per-tile steps without its raster output binding (a detector's outputs are no image)."""
    outputs = OutputBinding((), (), False, (), ())
    profile = OutputProfile(prediction.grid, (), np.dtype("float32"), None)
    model = prediction.model
    return Job(prediction.plan, prediction.source, model.runtime, model.spec, prediction.inputs, outputs, profile,
               ())


def _detect_to(prediction: Prediction, spec: DetectorSpec, out: FeatureOutput, kind: Kind,
               progress: ProgressCallback | None, engine: Engine) -> SeamMerger:
    job = detector_job(prediction)
    plan = job.plan
    merger = SeamMerger(plan, spec, kind)
    grid = TileGrid(plan)
    total = len(plan)
    tile_px = plan.geometry.tile.x * plan.geometry.tile.y
    if isinstance(engine, Dask):
        from .dask import dask_tile_objects

        stream: Iterator[tuple[Tile, Objects]] = dask_tile_objects(
            job, spec, kind, client=engine.client, scheduler=engine.scheduler, workers=engine.workers,
            in_flight=engine.in_flight)
    else:
        stream = ((t, Objects.empty() if d is None else tile_objects(t, d, grid, kind))
                  for t, d in detect_tiles(job, spec))
    # GDAL's block cache would fill 5% of RAM over a wide raster: capped to what a row of tiles needs, as rasters
    with contextlib.nullcontext() if isinstance(engine, Dask) else bounded_gdal_cache(job):
        for done, (tile, objects) in enumerate(stream, 1):
            out.objects(merger.add_tile(tile.row, tile.col, objects))
            if progress is not None:
                progress(done, total, done * tile_px)
    out.objects(merger.finish())
    return merger


def _vector_crs(prediction: Prediction, vector_crs: Any) -> tuple[Any, Any]:
    """(the grid's CRS, the output's CRS) as pyproj CRSs."""
    from pyproj import CRS

    crs = prediction.grid.crs
    src = CRS.from_user_input(crs.to_wkt()) if crs is not None else None
    if vector_crs is None:
        return src, src
    from ..sources import parse_crs

    return src, CRS.from_user_input(parse_crs(vector_crs).to_wkt())


def _engine(prediction: Prediction, options: dict[str, Any]) -> Engine:
    """The engine to run on, from ``engine=`` and the Dask keywords (``client=``, ``workers=``...) beside it."""
    given = {k: options.pop(k) for k in list(options) if k in DASK_OPTIONS}
    chosen = resolve_engine(options.pop("engine", None), prediction.engine)
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        if not isinstance(chosen, Dask):
            raise SpecError(f"{', '.join(k + '=' for k in given)} only apply with engine='dask' "
                            "(or engine=tilecast.Dask(...))")
        chosen = dataclasses.replace(chosen, **given)
    unknown = sorted(set(options) - {"strip_rows", "chunk_size"})
    if unknown:
        raise SpecError(f"unknown options {unknown}; vector outputs take engine=, strip_rows= and chunk_size= "
                        f"(and the Dask keywords {list(DASK_OPTIONS)})")
    if options.get("chunk_size") is not None and not isinstance(chosen, Dask):
        raise SpecError("chunk_size= sizes the Dask engine's chunks; the local engine polygonizes in strips "
                        "(strip_rows=): use that, or engine='dask'")
    return chosen


def _run(prediction: Prediction, target_factory: Any, *, vector_crs: Any, detector: DetectorSpec | None,
         simplify: float | None, min_area: float | None, progress: bool | ProgressCallback | None,
         run_options: Mapping[str, Any]) -> tuple[Any, Any]:
    """Run the prediction into the target ``target_factory(crs, fields, geometry_type)`` builds."""
    callback: ProgressCallback | None = Progress("vectors") if progress is True else (progress or None)
    options = dict(run_options)
    engine = _engine(prediction, options)
    src_crs, out_crs = _vector_crs(prediction, vector_crs)
    spec = detector
    if spec is not None:
        kind = kind_of(spec, prediction.model.signature.output_names)
        fields = object_fields(kind != "box")
        target = target_factory(out_crs, fields, "Polygon" if kind != "polygon" else "Unknown")
        out = FeatureOutput(target, prediction.source.grid.transform, src_crs, spec.class_names,
                            vector_crs=out_crs, with_area=kind != "box", simplify=simplify, min_area=min_area,
                            boxes=kind == "box")
        _detect_to(prediction, spec, out, kind, callback, engine)
        return target, fields
    profile = prediction.profile
    if not profile.categorical:
        raise VectorFormatError(
            f"the model's output ({', '.join(profile.band_names)}: {profile.dtype}) is neither objects nor a class "
            "map: vector outputs need a detector (det_type in its metadata or card, or det_type=) or an integer "
            "output band to polygonize; write a raster (.tif) instead"
        )
    band = len(profile.band_names) - 1 if prediction.append_input else 0
    # the class band's own dtype: appended input bands may widen the file's (float32 + uint8 is float32)
    classes = profile.bands[-1 if prediction.append_input else 0].dtype if profile.bands else profile.dtype
    fields = polygon_fields(classes)
    target = target_factory(out_crs, fields, "Polygon")
    out = FeatureOutput(target, profile.grid.transform, src_crs, {}, vector_crs=out_crs, simplify=simplify,
                        min_area=min_area, class_dtype=fields["class_id"])
    if isinstance(engine, Dask):  # chunks come in any order: polygonized per chunk, seams dissolved both ways
        prediction.run(PolygonChunkSink(out, band=band), callback, engine, chunk_size=options.get("chunk_size"))
    else:
        prediction.run(PolygonSink(out, band=band, block_rows=int(options.get("strip_rows", 256))), callback,
                       engine)
    return target, fields


def _detector(prediction: Prediction, detector: DetectorSpec | str | None, confidence: float | None,
              iou: float | None, class_names: Any) -> DetectorSpec | None:
    if isinstance(detector, DetectorSpec):
        return detector.with_overrides(confidence=confidence, iou=iou,
                                       class_names=None if class_names is None else detector_spec(
                                           det_type=detector.det_type, class_names=class_names).class_names)
    return detector_of(prediction, det_type=detector, confidence=confidence, iou=iou, class_names=class_names)


def predict_vectors(
    prediction: Prediction,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    vector_crs: Any = None,
    detector: DetectorSpec | str | None = None,
    confidence: float | None = None,
    iou: float | None = None,
    class_names: Any = None,
    simplify: float | None = None,
    min_area: float | None = None,
    progress: bool | ProgressCallback | None = None,
    **run_options: Any,
) -> Path:
    """Stream the prediction's objects (a detector) or regions (a class map) into a vector file at ``path``.

    The format follows the extension (``.parquet`` GeoParquet, ``.gpkg``, ``.fgb``, ``.geojson``, ``.shp``); the
    CRS is the raster's, or ``vector_crs``. ``detector`` (a :class:`DetectorSpec` or a ``det_type``) makes any model
    a detector; ``confidence``, ``iou`` and ``class_names`` override its metadata and card. ``simplify`` (map
    units) and ``min_area`` apply to polygons; ``min_area`` and the ``area`` field are square map units, or square
    metres on the ellipsoid when the output CRS is geographic (lat/lon). ``run_options``: ``engine="dask"`` runs
    tiles as Dask tasks (or ``engine=tilecast.Dask(...)``; ``client=``, ``scheduler=``, ``workers=`` beside it);
    ``strip_rows`` (256) polygonizes a class map in strips of at least this many rows on the local engine,
    ``chunk_size`` sizes the Dask engine's chunks (memory against seams).
    """
    from ..sinks.safety import refuse_overwriting_inputs

    refuse_overwriting_inputs(path, prediction.source)
    spec = _detector(prediction, detector, confidence, iou, class_names)
    state: dict[str, VectorWriter] = {}

    def factory(crs: Any, fields: Mapping[str, Any], geometry_type: str) -> VectorWriter:
        state["w"] = VectorWriter(path, crs, fields, overwrite=overwrite, geometry_type=geometry_type)
        return state["w"]

    try:
        _run(prediction, factory, vector_crs=vector_crs, detector=spec, simplify=simplify, min_area=min_area,
             progress=progress, run_options=run_options)
    except BaseException:
        if "w" in state:
            state["w"].abort()
        raise
    return state["w"].close()


def to_geodataframe(
    prediction: Prediction,
    *,
    vector_crs: Any = None,
    detector: DetectorSpec | str | None = None,
    confidence: float | None = None,
    iou: float | None = None,
    class_names: Any = None,
    simplify: float | None = None,
    min_area: float | None = None,
    progress: bool | ProgressCallback | None = None,
    **run_options: Any,
) -> Any:
    """The prediction's objects or regions as a GeoDataFrame in memory (small areas; see :func:`predict_vectors`)."""
    spec = _detector(prediction, detector, confidence, iou, class_names)

    def factory(crs: Any, fields: Mapping[str, Any], geometry_type: str) -> FeatureTarget:
        return Features(crs)

    target, fields = _run(prediction, factory, vector_crs=vector_crs, detector=spec, simplify=simplify,
                          min_area=min_area, progress=progress, run_options=run_options)
    return target.to_geodataframe(fields)
