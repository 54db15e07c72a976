"""Vector outputs: detections, instances and class-map polygons, merged across tile seams and streamed to
GeoParquet, GeoPackage, FlatGeobuf, GeoJSON or Shapefile.

The pieces, one concept each: :mod:`.metadata` (a detector's decoding parameters), :mod:`.decode` (output tensors to
objects in tile pixels), :mod:`.tiles` (the per-tile steps), :mod:`.merge` (the seam-aware merger),
:mod:`.polygonize` (class maps, strip by strip), :mod:`.features` (map coordinates and attributes), :mod:`.write`
(streaming sinks), :mod:`.run` (the drivers), :mod:`.dask` (the Dask engine) and :mod:`.classmap` (existing class
rasters). The user guide is ``docs/vectors.md``.
"""

from __future__ import annotations

from .classmap import polygonize_raster
from .errors import DetectorOutputError, DetectorSpecError, VectorFormatError
from .metadata import DET_TYPES, DetectorSpec, describe_detector, detector_spec
from .run import detector_of, predict_vectors, to_geodataframe
from .write import VECTOR_FORMATS, is_vector_path, vector_driver

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
