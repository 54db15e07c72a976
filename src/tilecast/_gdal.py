"""GDAL's block cache: how tilecast sizes it for one step, unless the user sized it. How large it is for each step
is the resource policy's call (:mod:`tilecast.resources`)."""

from __future__ import annotations

import os

import rasterio
import rasterio.env

__all__ = ["gdal_cache", "smaller_gdal_cache"]


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
