"""The sink contract: ``open(profile)``, ``write(window, data)`` in row order, then ``close()`` or ``abort()``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from rasterio.windows import Window

from ..sources.base import Grid
from ..spec import OutputBand

__all__ = ["OutputProfile", "Sink"]


@dataclass(frozen=True)
class OutputProfile:
    """Everything a sink needs to lay out the result before the first pixel arrives."""

    grid: Grid
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | None
    bands: tuple[OutputBand, ...] = ()
    categorical: bool = False
    """Class maps use nearest/mode overviews; continuous values use average."""
    tags: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Sink(Protocol):
    block_rows: int
    """Blocks are handed over in multiples of this many rows (except the last)."""

    def open(self, profile: OutputProfile) -> None: ...

    def write(self, window: Window, data: np.ndarray) -> None:
        """Take the finished rows in ``window``. ``data`` may be the runner's own buffer, reused once ``write``
        returns: copy what you keep."""
        ...

    def close(self) -> Any:
        """Finish and publish the output; returns what the caller gets back (a path, an array)."""
        ...

    def abort(self) -> None:
        """Leave nothing behind."""
        ...
