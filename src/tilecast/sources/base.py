"""The source contract: ``read(window) -> (data, valid)`` in the model's band order, plus the grid it lives on."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..errors import BandMismatchError

__all__ = ["Grid", "Source", "aligned_grid", "select_bands"]


@dataclass(frozen=True)
class Grid:
    """A georeferenced pixel grid: CRS, transform and ``(height, width)``."""

    crs: CRS
    transform: Affine
    shape: tuple[int, int]

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        from rasterio.transform import array_bounds

        h, w = self.shape
        west, south, east, north = array_bounds(h, w, self.transform)
        return west, south, east, north

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)


def aligned_grid(crs: CRS, bounds: Sequence[float], resolution: tuple[float, float]) -> Grid:
    """The grid covering ``(left, bottom, right, top)`` in ``crs``, snapped to whole multiples of the resolution
    (like ``gdalwarp -tap``), so grids made from different inputs at the same resolution line up."""
    rx, ry = resolution
    left, bottom, right, top = bounds
    x0, y1 = math.floor(left / rx) * rx, math.ceil(top / ry) * ry
    width = max(1, math.ceil((right - x0) / rx - 1e-9))
    height = max(1, math.ceil((y1 - bottom) / ry - 1e-9))
    return Grid(crs, Affine(rx, 0, x0, 0, -ry, y1), (height, width))


@runtime_checkable
class Source(Protocol):
    """Pixels on a grid. ``read`` may be called from several threads at once."""

    grid: Grid
    band_names: list[str]
    dtype: np.dtype
    properties: Mapping[str, Any]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands, h, w)`` data and a ``(h, w)`` bool validity mask (min over bands), or None if all valid."""
        ...

    def close(self) -> None: ...


def select_bands(names: Sequence[str], selection: Sequence[str | int] | None) -> list[int]:
    """0-based positions of ``selection`` (1-based indexes or band names) among ``names``; all by default."""
    if selection is None:
        return list(range(len(names)))
    out = []
    for item in selection:
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit() and item not in names):
            i = int(item)
            if not 1 <= i <= len(names):
                raise BandMismatchError(
                    f"band index {i} is out of range; the raster has {len(names)} bands "
                    f"(1..{len(names)}): {list(names)}"
                )
            out.append(i - 1)
        elif item in names:
            out.append(list(names).index(item))
        else:
            raise BandMismatchError(
                f"band {item!r} is not in the raster; its bands are {list(names)}. "
                "Select bands by 1-based index or by band description (--bands)"
            )
    if not out:
        raise BandMismatchError("no bands selected; pass at least one band")
    return out
