"""The source contract: ``read(window) -> (data, valid)`` in the model's band order, plus the grid it lives on.

What a source can do beyond that (warp, per-band dtypes, name its files, reopen itself on a worker) is declared, with
a default, on :class:`BaseSource`, never discovered by probing attributes.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from ..errors import BandMismatchError

__all__ = [
    "BaseSource", "Grid", "Located", "PerBandMasks", "PerBandTypes", "RebuildableSource", "Reprojectable", "Resampled",
    "SharedBlocks", "Source", "SourceRecipe", "ThreadHandles", "aligned_grid", "band_dtypes", "native_grid",
    "read_masked", "select_bands", "shared_block_shape", "source_paths", "source_recipe_of",
]


class ThreadHandles:
    """The GDAL handles a source opens for each thread (GDAL handles are not thread-safe), closed with the source or
    once their thread has ended: every run reads (and decodes) on threads of its own, so without this each run of the
    same source would leave its handles open until the source is closed, and a prediction written again and again
    runs out of files."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[tuple[threading.Thread, Any]] = []

    def keep(self, *handles: Any) -> None:
        """Hold the calling thread's new ``handles`` (in the order they were opened), and close those of ended
        threads."""
        me = threading.current_thread()
        with self._lock:
            ended = [h for t, h in self._held if not t.is_alive()]
            self._held = [(t, h) for t, h in self._held if t.is_alive()]
            self._held.extend((me, h) for h in handles)
        _close_all(ended)

    def close(self) -> None:
        with self._lock:
            held, self._held = [h for _, h in self._held], []
        _close_all(held)


def _close_all(handles: list[Any]) -> None:
    for h in reversed(handles):  # a warped VRT before the dataset under it
        with contextlib.suppress(Exception):
            h.close()


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
    """The required part of the contract: pixels on a grid. ``read`` may be called from several threads at once.

    Optional abilities are declared on :class:`BaseSource` with their defaults; read them through
    :func:`native_grid`, :func:`band_dtypes`, :func:`source_paths` and :func:`source_recipe_of`, which apply the same
    defaults to sources that do not derive from it.
    """

    grid: Grid
    band_names: list[str]
    dtype: np.dtype
    properties: Mapping[str, Any]

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """``(bands, h, w)`` data and a ``(h, w)`` bool validity mask (min over bands), or None if all valid."""
        ...

    def close(self) -> None: ...


SourceRecipe = tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]
"""``(factory, args, kwargs)``: ``factory(*args, **kwargs)`` opens the source again in another process."""


@runtime_checkable
class Resampled(Protocol):
    """Resamples its files onto ``grid``; ``native`` is the grid of the data itself (what bounds refer to)."""

    native: Grid | None


@runtime_checkable
class PerBandTypes(Protocol):
    """Knows each selected band's own dtype (``dtype`` is their common type)."""

    dtypes: Sequence[np.dtype] | None


@runtime_checkable
class PerBandMasks(Protocol):
    """Knows each band's own mask (Earth Engine's masks are per band): ``read_masked`` returns ``(bands, h, w)``
    data and a ``(bands, h, w)`` (or, when the bands share it, ``(h, w)``) mask, or None if all valid."""

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]: ...


@runtime_checkable
class Located(Protocol):
    """Reads ``paths`` (files or URLs): workers open them again, and a resumed run checks they did not change."""

    paths: Sequence[str]


@runtime_checkable
class SharedBlocks(Protocol):
    """Can serve every reading thread from one store of decoded input blocks (:mod:`tilecast.sources.blocks`), so
    that more readers decode in parallel instead of decoding the same blocks again."""

    def shared_block_shape(self) -> tuple[int, int] | None:
        """The ``(h, w)`` of the blocks it would share, on its grid; None when it cannot."""
        ...

    def shared_pixel_bytes(self) -> int:
        """What one pixel of a shared block holds: every selected band's value, and its mask where there is one."""
        ...

    def share_blocks(self, budget: int, threads: int = 0) -> None:
        """Serve reads from a store of up to ``budget`` bytes of decoded blocks, decoded ahead of the reads on
        ``threads`` threads; a budget of 0 goes back to plain reads."""
        ...

    def expect(self, window: Window) -> None:
        """``window`` will be read soon: start decoding its blocks."""
        ...


@runtime_checkable
class RebuildableSource(Protocol):
    """Says how another process (a Dask worker) opens it again, instead of being pickled with the job."""

    def recipe(self) -> SourceRecipe | None: ...


@runtime_checkable
class Reprojectable(Protocol):
    """Warps itself onto another CRS or resolution (a mosaic warps each member per window)."""

    def reprojected(self, crs: Any, resolution: float | tuple[float, float] | None, resampling: Any) -> Source: ...


class BaseSource:
    """A base class for sources that declares every optional ability with its default: subclasses implement
    ``grid``, ``band_names``, ``dtype`` and ``read``, and override only the abilities they have."""

    grid: Grid
    band_names: list[str]
    dtype: np.dtype
    properties: Mapping[str, Any] = MappingProxyType({})

    native: Grid | None = None
    """The grid of the data itself, for sources that warp it onto ``grid``; None: ``grid``."""
    dtypes: Sequence[np.dtype] | None = None
    """Each selected band's own dtype; None: ``dtype`` for every band."""
    paths: Sequence[str] = ()
    """The files or URLs read; none for in-memory sources."""

    def read(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement read()")

    def read_masked(self, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
        """Data and each band's mask (:class:`PerBandMasks`); by default the mask ``read`` gives, shared by every
        band."""
        return self.read(window)

    def shared_block_shape(self) -> tuple[int, int] | None:
        """The blocks it would decode once for every reading thread (:class:`SharedBlocks`); None: it cannot."""
        return None

    def shared_pixel_bytes(self) -> int:
        """One pixel of a shared block (:class:`SharedBlocks`); by default every band's value and a mask byte."""
        return len(self.band_names) * (np.dtype(self.dtype).itemsize + 1)

    def share_blocks(self, budget: int, threads: int = 0) -> None:
        """Decode each block once for every reading thread, keeping ``budget`` bytes (:class:`SharedBlocks`)."""

    def expect(self, window: Window) -> None:
        """A hint that ``window`` will be read soon (:class:`SharedBlocks`); nothing by default."""

    def recipe(self) -> SourceRecipe | None:
        """How a worker process opens this source again; None: the source object itself is sent (pickled).

        Raise a tilecast error when the source cannot be opened elsewhere (e.g. an in-memory dataset)."""
        return None

    def close(self) -> None:
        """Release file handles."""


def native_grid(source: Source) -> Grid:
    """The grid of the data itself (:class:`Resampled`); ``source.grid`` by default."""
    native = source.native if isinstance(source, Resampled) else None
    return native if native is not None else source.grid


def band_dtypes(source: Source) -> list[np.dtype]:
    """Each selected band's dtype (:class:`PerBandTypes`); ``source.dtype`` for all by default."""
    if isinstance(source, PerBandTypes) and source.dtypes:
        return list(source.dtypes)
    return [np.dtype(source.dtype)] * len(source.band_names)


def read_masked(source: Source, window: Window) -> tuple[np.ndarray, np.ndarray | None]:
    """``source``'s data in ``window`` with each band's mask where it knows them (:class:`PerBandMasks`), else the
    ``(h, w)`` mask of ``read``."""
    if isinstance(source, PerBandMasks):
        return source.read_masked(window)
    return source.read(window)


def shared_block_shape(source: object) -> tuple[int, int] | None:
    """The blocks ``source`` decodes once for all reading threads when asked (:class:`SharedBlocks`); None if not."""
    return source.shared_block_shape() if isinstance(source, SharedBlocks) else None


def source_paths(source: object) -> list[str]:
    """The files or URLs ``source`` reads (:class:`Located`); none by default."""
    return list(source.paths or ()) if isinstance(source, Located) else []


def source_recipe_of(source: object) -> SourceRecipe | None:
    """How a worker opens ``source`` again (:class:`RebuildableSource`); None: send the object itself."""
    return source.recipe() if isinstance(source, RebuildableSource) else None


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
