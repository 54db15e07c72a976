"""Predictions on vector features: Earth Engine's ``predictProperties`` for GeoDataFrames and vector files.

Each feature is one instance; its properties (and, beyond Earth Engine, values read from rasters at the feature)
are the model's inputs, and the predicted properties are merged into the feature. Needs ``tilecast[features]``.
"""

from __future__ import annotations

from .io import open_features, write_features
from .predict import FeatureProgress, PropertyOptions, predict_features_file, predict_properties
from .properties import OutputProperty, parse_output_properties
from .rasters import STATS, RasterInputs

__all__ = [
    "STATS",
    "FeatureProgress",
    "OutputProperty",
    "PropertyOptions",
    "RasterInputs",
    "open_features",
    "parse_output_properties",
    "predict_features_file",
    "predict_properties",
    "write_features",
]
