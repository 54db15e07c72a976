"""tilecast: apply trained models to georeferenced rasters at any scale, with Earth Engine's ee.Model semantics."""

from .errors import *  # noqa: F403
from .errors import __all__ as _errors
from .model import Model
from .plan import TileGeometry, TilePlan
from .prediction import Prediction
from .resources import Resources
from .runners.engine import Dask, Engine, Local
from .spec import ModelSpec, OutputBand
from .view import view

__version__ = "0.1.0"

__all__ = [
    "Dask",
    "Engine",
    "Local",
    "Model",
    "ModelSpec",
    "OutputBand",
    "Prediction",
    "Resources",
    "TileGeometry",
    "TilePlan",
    "__version__",
    "view",
    *_errors,
]
