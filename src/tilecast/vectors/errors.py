"""Errors of the vector outputs; they live in :mod:`tilecast.errors` (the one tree) and are re-exported here."""

from __future__ import annotations

from ..errors import DetectorOutputError, DetectorSpecError, VectorFormatError

__all__ = ["DetectorOutputError", "DetectorSpecError", "VectorFormatError"]
