"""Errors of the vector outputs: leaves of :mod:`tilecast.errors`, so ``except SpecError`` and friends still catch
them::

    SpecError
    └── DetectorSpecError            an unknown det_type, or decoding parameters that contradict each other
    OutputShapeError
    └── DetectorOutputError          a detector's outputs do not have the shape its det_type decodes
    OutputError
    └── VectorFormatError (ValueError)  an unknown vector extension, or a raster-only option with a vector one
"""

from __future__ import annotations

from ..errors import OutputError, OutputShapeError, SpecError

__all__ = ["DetectorOutputError", "DetectorSpecError", "VectorFormatError"]


class DetectorSpecError(SpecError):
    """The detector's decoding parameters (``det_type``, thresholds, class names) cannot be used."""


class DetectorOutputError(OutputShapeError):
    """The model's outputs do not decode under its ``det_type``; the message names the shape expected."""


class VectorFormatError(OutputError, ValueError):
    """The output's extension is not a vector format tilecast writes, or an option does not apply to it."""
