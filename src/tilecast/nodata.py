"""The pixel types and nodata values tilecast can write into a GeoTIFF band: what GDAL records, as rasterio reads it
back, is what GIS tools mask; a value it records as another one would mask real pixels."""

from __future__ import annotations

import numpy as np

from .errors import NodataError, SpecError

__all__ = ["check_nodata", "check_raster_dtype", "default_nodata"]


def check_nodata(nodata: float, dtype: np.dtype) -> None:
    """Raise :class:`NodataError` unless ``nodata`` is exactly representable in ``dtype``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if np.isnan(nodata):
            return
        if np.isfinite(nodata) and float(dtype.type(nodata)) != float(nodata):
            raise NodataError(f"nodata {nodata} is not representable in {dtype}; choose a value that {dtype} holds")
        return
    info = np.iinfo(dtype)
    if dtype == np.int64 and np.isfinite(nodata) and abs(nodata) > _EXACT_INT64_NODATA:
        raise NodataError(f"nodata {nodata:.0f} is beyond +-2**53: GDAL records an int64 nodata through a double, and "
                          f"rasterio reads such a value back as another one (-2**63 as -9); use e.g. "
                          f"{default_nodata(dtype)}")
    if np.isnan(nodata) or nodata != int(nodata) or not info.min <= nodata <= info.max:
        raise NodataError(
            f"nodata {nodata} is not representable in {dtype} (range {info.min}..{info.max}); "
            f"pass a nodata value in that range, e.g. {default_nodata(dtype)}"
        )


def default_nodata(dtype: np.dtype) -> float:
    """NaN for floats, the largest value for unsigned and the smallest for signed integers (for int64, -2**53: the
    smallest one recorded exactly)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return float("nan")
    if dtype.kind == "b":
        return 0
    if dtype == np.int64:
        return -_EXACT_INT64_NODATA
    info = np.iinfo(dtype)
    return info.max if dtype.kind == "u" else info.min


_EXACT_INT64_NODATA = 2**53
"""The largest int64 nodata magnitude GDAL records and rasterio reads back exactly (it goes through a double)."""


def check_raster_dtype(dtype: np.dtype, what: str) -> None:
    """Raise :class:`SpecError` for a dtype tilecast cannot write as a GeoTIFF band, naming the type to declare."""
    why = {
        np.dtype(np.bool_): ("rasterio has no bool band type", "uint8"),
        np.dtype(np.float16): ("rasterio has no float16 band type", "float32"),
        np.dtype(np.uint64): ("rasterio records no uint64 nodata value", "int64"),
    }.get(np.dtype(dtype))
    if why:
        example = f"{what} {why[1]}" if what.startswith("--") else f"--output-band NAME:{why[1]}"
        raise SpecError(f"{what} is {dtype}, which tilecast cannot write as a GeoTIFF band ({why[0]}); declare "
                        f"{why[1]} instead (e.g. {example})")
