"""Sources: where pixels come from. Each implements :class:`~tilecast.sources.base.Source` (most derive from
:class:`~tilecast.sources.base.BaseSource`, which declares the optional abilities)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import InputError
from .base import BaseSource, Grid, Source, select_bands
from .rasterio_source import RasterioSource, parse_crs, warp_grid

__all__ = ["BaseSource", "Grid", "RasterioSource", "Source", "open_source", "parse_crs", "select_bands", "warp_grid"]


def open_source(obj: Any, bands: Sequence[str | int] | None = None) -> Source:
    """A source for a path/URL, an open rasterio dataset, an xarray object, or an existing source.

    Many rasters become one mosaic: a list or tuple of paths/URLs, a glob pattern (``scenes/*.tif``), STAC items
    (a ``.json`` file or URL of an Item, ItemCollection or FeatureCollection, a dict, or pystac objects).
    """
    from .stac import is_stac, stac_source

    if is_stac(obj):
        return stac_source(obj, bands)
    paths_given = isinstance(obj, (list, tuple)) and bool(obj) and all(isinstance(p, (str, os.PathLike)) for p in obj)
    if paths_given or isinstance(obj, (str, os.PathLike)):
        from .mosaic import expand_paths, mosaic_from

        paths = expand_paths(obj)  # globs, also inside a list, expanded
        return mosaic_from(paths, bands) if len(paths) > 1 else RasterioSource(paths[0], bands)
    if isinstance(obj, Source):
        return obj
    module = type(obj).__module__
    if module.startswith("rasterio"):
        return RasterioSource(obj, bands)
    if module.startswith("xarray"):
        from .xarray_source import XarraySource

        return XarraySource(obj, bands)
    raise InputError(
        f"cannot read a raster from a {type(obj).__name__}; pass a path or URL, a list or glob of them, STAC items, "
        "a rasterio dataset, or an xarray DataArray/Dataset with a CRS"
    )
