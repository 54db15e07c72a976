"""Vector outputs: detections, instances and class-map polygons, merged across tile seams and streamed to
GeoParquet, GeoPackage, FlatGeobuf, GeoJSON or Shapefile.

The pieces, one concept each: :mod:`.metadata` (a detector's decoding parameters), :mod:`.decode` (output tensors to
objects in tile pixels), :mod:`.tiles` (the per-tile steps), :mod:`.merge` (the seam-aware merger),
:mod:`.polygonize` (class maps, strip by strip), :mod:`.features` (map coordinates and attributes), :mod:`.write`
(streaming sinks), :mod:`.run` (the drivers), :mod:`.dask` (the Dask engine) and :mod:`.classmap` (existing class
rasters). The user guide is ``docs/vectors.md``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .classmap import polygonize_raster
    from .errors import DetectorOutputError, DetectorSpecError, VectorFormatError
    from .metadata import DET_TYPES, DetectorSpec, describe_detector, detector_spec
    from .run import detector_of, predict_vectors, to_geodataframe
    from .write import VECTOR_FORMATS, is_vector_path, vector_driver

_WHERE = {
    "polygonize_raster": "classmap", "DetectorOutputError": "errors", "DetectorSpecError": "errors",
    "VectorFormatError": "errors", "DET_TYPES": "metadata", "DetectorSpec": "metadata",
    "describe_detector": "metadata", "detector_spec": "metadata", "detector_of": "run", "predict_vectors": "run",
    "to_geodataframe": "run", "VECTOR_FORMATS": "write", "is_vector_path": "write", "vector_driver": "write",
}
"""Each public name's module: imported on first use, so that a raster prediction (which asks only whether its
output path is a vector file) does not import the detectors, the merger and the polygonizer."""


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "DET_TYPES",
    "VECTOR_FORMATS",
    "DetectorOutputError",
    "DetectorSpec",
    "DetectorSpecError",
    "VectorFormatError",
    "describe_detector",
    "detector_of",
    "detector_spec",
    "is_vector_path",
    "polygonize_raster",
    "predict_vectors",
    "to_geodataframe",
    "vector_driver",
]
