"""GDAL's block cache: how tilecast sizes it for one step, unless the user sized it. How large it is for each step
is the resource policy's call (:mod:`tilecast.resources`)."""

from __future__ import annotations

import os

import rasterio
import rasterio.env

__all__ = ["compression_supported", "gdal_cache", "smaller_gdal_cache"]


def gdal_cache(nbytes: int) -> rasterio.Env:
    """An Env that caps GDAL's block cache at ``nbytes``, or changes nothing when the user set ``GDAL_CACHEMAX`` (in
    the environment or an active ``rasterio.Env``). rasterio passes an integer ``GDAL_CACHEMAX`` to GDAL in bytes
    and restores the previous size on exit; lowering it evicts blocks at once, so memory goes back too."""
    if "GDAL_CACHEMAX" in os.environ or (rasterio.env.hasenv() and "GDAL_CACHEMAX" in rasterio.env.getenv()):
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=nbytes)


def smaller_gdal_cache(nbytes: int) -> rasterio.Env:
    """An Env that lowers GDAL's block cache to ``nbytes`` if it is larger (whoever set it): for steps that read
    every block once, where a bigger cache only holds memory."""
    from rasterio._env import get_gdal_config

    current = get_gdal_config("GDAL_CACHEMAX")
    if isinstance(current, int) and current <= nbytes:
        return rasterio.Env()
    return rasterio.Env(GDAL_CACHEMAX=nbytes)


_COMPRESSIONS: dict[str, bool] = {}

_ALWAYS = frozenset({"NONE", "DEFLATE", "LZW", "PACKBITS"})
"""Codecs every GDAL's GeoTIFF driver has (zlib is one of GDAL's own requirements): no probe, which costs more than
writing a small output."""


def compression_supported(name: str) -> bool:
    """Whether this GDAL writes GeoTIFFs compressed with ``name``: a GeoTIFF with an unknown or missing codec is
    written uncompressed with only a warning, so a typo would be silently ignored. Probed once per name by writing
    a tiny in-memory file and reading back what it got."""
    key = str(name).upper()
    if key not in _COMPRESSIONS:
        from rasterio.enums import Compression

        known = {c.name.upper() for c in Compression} | {"NONE"}
        ok = key in known
        if ok and key not in _ALWAYS:
            ok = _probe_compression(key)
        _COMPRESSIONS[key] = ok
    return _COMPRESSIONS[key]


def _probe_compression(key: str) -> bool:
    import numpy as np
    from rasterio.errors import RasterioError
    from rasterio.transform import from_origin

    path = f"/vsimem/tilecast-compress-probe-{key}.tif"
    try:
        with rasterio.Env(CPL_LOG="/dev/null"):
            # A transform other than the identity, so that rasterio does not warn about a missing georeference.
            with rasterio.open(path, "w", driver="GTiff", width=16, height=16, count=3, dtype="uint8",
                               compress=key, transform=from_origin(0, 16, 1, 1)) as dst:
                dst.write(np.zeros((3, 16, 16), "uint8"))
            with rasterio.open(path) as src:
                got = src.tags(ns="IMAGE_STRUCTURE").get("COMPRESSION", "")
    except (RasterioError, OSError, ValueError):
        return False
    finally:
        import contextlib

        with contextlib.suppress(Exception):
            from rasterio.shutil import delete

            delete(path)
    return bool(got)
