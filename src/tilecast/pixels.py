"""Pixel rules shared by every runner: mask footprints, edge padding and safe casts."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np

from .errors import CastError
from .plan import TileGeometry, footprint_ranges

__all__ = ["fill_dtype", "fill_masked", "footprint_valid", "halo_valid", "pad_tile", "safe_cast"]


def fill_dtype(dtype: np.dtype, fill_value: float) -> np.dtype:
    """``dtype``, or a float one when it cannot hold ``fill_value`` (NaN, negative or fractional fill of integer
    bands): the fill must reach the model as given, not wrapped (-1 as 255) or truncated (NaN as 0)."""
    dtype, fill = np.dtype(dtype), float(fill_value)
    if dtype.kind == "b":
        fits = fill in (0.0, 1.0)
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        fits = fill.is_integer() and info.min <= fill <= info.max
    else:
        return dtype
    return dtype if fits else np.result_type(dtype, np.float32)


def fill_masked(data: np.ndarray, valid: np.ndarray, fill_value: float) -> np.ndarray:
    """``data`` with each band's masked pixels set to ``fill_value``, in :func:`fill_dtype` of its dtype."""
    return np.where(valid, data, np.asarray(fill_value, dtype=fill_dtype(data.dtype, fill_value)))


def pad_tile(data: np.ndarray, pad: tuple[tuple[int, int], tuple[int, int]], mode: str) -> np.ndarray:
    """Pad ``(C, h, w)`` to the model's tile outside the raster: zeros, or a mirror of the edge (``reflect``)."""
    if not any(pad[0]) and not any(pad[1]):
        return data
    widths = ((0, 0), pad[0], pad[1])
    if mode == "reflect" and min(data.shape[1:]) > 1:
        return np.pad(data, widths, mode="reflect")
    if mode == "reflect":
        return np.pad(data, widths, mode="edge")
    return np.pad(data, widths, mode="constant")


def footprint_valid(valid: np.ndarray, geometry: TileGeometry) -> np.ndarray:
    """Output validity of one tile: an output pixel is valid only if every input pixel under it is valid.

    ``valid`` is the ``(tile_h, tile_w)`` core. This is Earth Engine's "minimum of the input masks" carried
    through the change of scale; padding outside the raster counts as valid so it never masks real pixels.
    """
    g = geometry
    (tw, th), (otw, oth) = g.tile, g.out
    if (tw, th) == (otw, oth):
        return valid
    if tw % otw == 0 and th % oth == 0:
        ky, kx = th // oth, tw // otw
        return valid.reshape(oth, ky, otw, kx).all(axis=(1, 3))
    if otw % tw == 0 and oth % th == 0:
        return valid.repeat(oth // th, axis=0).repeat(otw // tw, axis=1)
    rows = _ranges(oth, th, Fraction(oth, th))
    cols = _ranges(otw, tw, Fraction(otw, tw))
    invalid = np.zeros((th + 1, tw + 1), dtype=np.int64)
    invalid[1:, 1:] = np.cumsum(np.cumsum(~valid, axis=0), axis=1)
    r0, r1 = rows[:, 0:1], rows[:, 1:2]
    c0, c1 = cols[None, :, 0], cols[None, :, 1]
    count = invalid[r1, c1] - invalid[r0, c1] - invalid[r1, c0] + invalid[r0, c0]
    return count == 0


def halo_valid(padded: np.ndarray, oy: int, ox: int) -> np.ndarray:
    """Validity of the core of a ``(tile_h + 2 oy, tile_w + 2 ox)`` validity window where a pixel counts as valid
    only if every pixel within ``oy`` rows and ``ox`` columns of it is (a minimum filter over the overlap), for
    ``mask_receptive_field``."""
    if not oy and not ox:
        return padded
    h, w = padded.shape[0] - 2 * oy, padded.shape[1] - 2 * ox
    invalid = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=np.int64)
    invalid[1:, 1:] = np.cumsum(np.cumsum(~padded, axis=0), axis=1)
    ky, kx = 2 * oy + 1, 2 * ox + 1
    count = (invalid[ky : ky + h, kx : kx + w] - invalid[:h, kx : kx + w] - invalid[ky : ky + h, :w]
             + invalid[:h, :w])
    return count == 0


@lru_cache(maxsize=64)
def _ranges(n_out: int, n_in: int, scale: Fraction) -> np.ndarray:
    return np.asarray(footprint_ranges(n_out, n_in, scale), dtype=np.int64)


def needs_cast(dtype: np.dtype, dtypes: Sequence[np.dtype], out_dtype: np.dtype) -> bool:
    """Whether :func:`safe_cast` makes a new array (else it masks the values in place)."""
    return not (dtype == out_dtype and all(np.dtype(d) == out_dtype for d in dtypes))


def safe_cast(
    values: np.ndarray,
    dtypes: Sequence[np.dtype],
    valid: np.ndarray | None,
    names: Sequence[str],
    out_dtype: np.dtype,
    nodata: float,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Cast ``(bands, h, w)`` to each band's declared dtype, then to ``out_dtype``; masked pixels get ``nodata``.

    A valid value that the declared dtype cannot hold raises :class:`CastError` instead of wrapping around.
    Floats going to integers are rounded to the nearest integer. ``values`` is consumed: when nothing needs a cast
    (:func:`needs_cast`) it is returned itself (masked pixels set), saving a copy of every output strip; otherwise
    the result goes to ``out`` when given (a part of a larger strip, cast on another thread).
    """
    if not needs_cast(values.dtype, dtypes, out_dtype):
        if valid is not None:
            values[:, ~valid] = nodata
        return values
    out = np.empty(values.shape, dtype=out_dtype) if out is None else out
    for i, (dtype, name) in enumerate(zip(dtypes, names, strict=True)):
        band = values[i]
        if dtype.kind in "iu" and band.dtype.kind in "fiub" and band.dtype != dtype:
            checked = band if valid is None else band[valid]
            if checked.size:
                if band.dtype.kind == "f":
                    checked = np.rint(checked)
                    if not np.isfinite(checked).all():
                        raise CastError(
                            f"band {name!r} has NaN or infinite predictions that {dtype} cannot hold; "
                            "declare a float output dtype (e.g. float32)"
                        )
                info = np.iinfo(dtype)
                lo, hi = checked.min(), checked.max()
                if lo < info.min or hi > info.max:
                    raise CastError(
                        f"band {name!r} has predictions in [{lo}, {hi}] that do not fit {dtype} "
                        f"({info.min}..{info.max}); declare a wider output dtype"
                    )
            if band.dtype.kind == "f":
                band = np.rint(band) if valid is None else np.where(valid, np.rint(band), 0)
        out[i] = band.astype(dtype, copy=False) if dtype != out_dtype else band
    if valid is not None:
        out[:, ~valid] = nodata
    return out
