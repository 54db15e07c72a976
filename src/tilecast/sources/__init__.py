"""Sources: where pixels come from. Each implements :class:`~tilecast.sources.base.Source`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .base import Grid, Source, select_bands
from .rasterio_source import RasterioSource, parse_crs, warp_grid

__all__ = ["Grid", "RasterioSource", "Source", "open_source", "parse_crs", "select_bands", "warp_grid"]


def open_source(obj: Any, bands: Sequence[str | int] | None = None) -> Source:
    """A source for a path/URL, an open rasterio dataset, an xarray object, or an existing source."""
    if isinstance(obj, (str, os.PathLike)):
        return RasterioSource(obj, bands)
    if hasattr(obj, "read") and hasattr(obj, "grid") and hasattr(obj, "band_names"):
        return obj
    module = type(obj).__module__
    if module.startswith("rasterio"):
        return RasterioSource(obj, bands)
    if module.startswith("xarray"):
        from .xarray_source import XarraySource

        return XarraySource(obj, bands)
    raise InputError(
        f"cannot read a raster from a {type(obj).__name__}; pass a path or URL, a rasterio dataset, "
        "or an xarray DataArray/Dataset with a CRS"
    )
