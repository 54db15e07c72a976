"""The source contract: ``read(window) -> (data, valid)`` in the model's band order, plus the grid it lives on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..errors import BandMismatchError

__all__ = ["Grid", "Source", "select_bands"]


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


@dataclass
class BandInfo:
    names: list[str]
    dtypes: list[np.dtype]
    nodata: list[float | None] = field(default_factory=list)


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
                    f"band index {i} is out of range; the raster has {len(names)} bands (1..{len(names)}): {list(names)}"
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
