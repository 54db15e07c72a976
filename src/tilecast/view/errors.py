"""Errors of the map viewer, in tilecast's one tree (see :mod:`tilecast.errors`)::

    TilecastError
    ├── InputError (ValueError)
    │   └── UnknownColormapError            --colormap names no colormap rio-tiler has
    └── PortInUseError (OSError)            the port to serve the map on is taken
"""

from __future__ import annotations

from ..errors import InputError, TilecastError

__all__ = ["PortInUseError", "UnknownColormapError"]


class UnknownColormapError(InputError):
    """A colormap name that rio-tiler does not know."""


class PortInUseError(TilecastError, OSError):
    """The address the map server should listen on is already in use."""
