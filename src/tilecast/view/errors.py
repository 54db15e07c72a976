"""Errors of the map viewer; they live in :mod:`tilecast.errors` (the one tree) and are re-exported here."""

from __future__ import annotations

from ..errors import PortInUseError, UnknownColormapError

__all__ = ["PortInUseError", "UnknownColormapError"]
