"""Map layers: web-mercator XYZ tiles (256 px PNG, transparent where there is no data).

A :class:`PredictionLayer` warps tiles from the blocks a :class:`~tilecast.view.blocks.BlockRunner` computed on the
model's grid: it mosaics the few blocks under a tile into an in-memory GeoTIFF on that grid and lets rio-tiler warp
and encode it, exactly as rio-tiler would read the batch prediction's GeoTIFF. A :class:`RasterLayer` reads an
existing raster (the input in true colour, or a finished prediction) with rio-tiler directly.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import math
import os
import threading
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from anyio import to_thread
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile
from rasterio.warp import transform as transform_points
from rasterio.windows import Window
from rio_tiler.errors import NoOverviewWarning, TileOutsideBounds
from rio_tiler.io import Reader

from ..sources.base import Grid
from ..sources.categories import read_classes
from .blocks import BlockRunner
from .style import ClassStyle, RangeStyle, Style, check_colormap, class_colors, zoom_in_png
from .zooms import Zooms, block_zooms, check_georeferenced, native_zoom, tile_window, tilejson

__all__ = ["DEFAULT_BUDGET", "Layer", "PredictionLayer", "RasterLayer", "prediction_style", "raster_style"]

DEFAULT_BUDGET = 4
"""Blocks one tile request may compute at most (the zoom-out guard)."""
OVERVIEW_PIXELS = 512
"""Below the native zoom a tile is warped from blocks decimated to at most this many pixels per side."""

# A raster without overviews is slower to show zoomed out, but shows; the mosaics warped here never need them.
warnings.filterwarnings("ignore", category=NoOverviewWarning)

POLL_S = 0.25
"""How often a request waiting for blocks checks that its browser still wants the tile."""
PNG_CACHE_TILES = 4096
"""Rendered tiles kept, so a tile asked for again is not warped again."""
PNG_CACHE_BYTES = 64 * 2**20
"""...and at most this many bytes of them: a class map's tile takes a few KB, a noisy float output's 100 KB and
more (4096 of those would hold half a gigabyte)."""

StillWanted = Callable[[], Awaitable[bool]]


class Layer:
    """One map layer: its TileJSON, its tiles, its legend and the values under the cursor."""

    name: str
    grid: Grid
    zooms: Zooms
    style: Style
    band_names: Sequence[str] = ()

    async def tile(self, z: int, x: int, y: int, still_wanted: StillWanted | None = None) -> bytes | None:
        """The PNG of tile ``z/x/y``; None when it is empty (outside the layer) or nobody waits for it any more."""
        raise NotImplementedError

    def point(self, lon: float, lat: float) -> dict[str, Any] | None:
        """The layer's values at a WGS84 position, or None where there are none (yet)."""
        raise NotImplementedError

    def tilejson(self, url: str) -> dict[str, Any]:
        return tilejson(self.name, self.versioned(url), self.grid, self.zooms)

    def identity(self) -> list[Any]:
        """What the tiles depend on (besides the style)."""
        return [self.name]

    @functools.cached_property
    def version(self) -> str:
        """Part of the tile URLs, so that a browser's cached tiles of another model, input or style (a restarted
        ``view`` on the same port) are never shown. Fixed when first asked, before a range settles from data: a
        range still to come from this session's first tile makes it this session's own (the last session's tiles
        may have been coloured with another range)."""
        parts = [self.identity(), self.style.legend(), self.style.band]
        if isinstance(self.style, RangeStyle) and self.style.rescale is None:
            parts.append(os.urandom(8).hex())
        return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:12]

    def versioned(self, url: str) -> str:
        return f"{url}?v={self.version}"

    def busy(self) -> bool:
        """Whether the layer is computing something that closing would have to wait for."""
        return False

    def close(self, wait: bool = True) -> None:
        """Release what the layer holds (``wait``: for work under way to end)."""


def _pixel(grid: Grid, lon: float, lat: float) -> tuple[int, int] | None:
    """The grid's pixel under a WGS84 position, or None: outside the grid, or where the grid's CRS has no place
    for it (PROJ refuses a point far from a UTM zone, a latitude past 90)."""
    try:
        xs, ys = transform_points("EPSG:4326", grid.crs, [lon], [lat])
    except (CPLE_BaseError, RasterioError, ValueError):
        return None
    col, row = ~grid.transform * (xs[0], ys[0])
    if not (math.isfinite(row) and math.isfinite(col)):
        return None
    r, c = math.floor(row), math.floor(col)
    h, w = grid.shape
    return (r, c) if 0 <= r < h and 0 <= c < w else None


class PredictionLayer(Layer):
    """Tiles of a prediction, computed on its own grid in blocks. ``budget`` (blocks one tile may need) sets
    ``minzoom``; below it no tile starts a block."""

    def __init__(self, runner: BlockRunner, style: Style, budget: int = DEFAULT_BUDGET, name: str = "prediction"):
        self.runner = runner
        self.style = style
        self.budget = budget
        self.name = name
        profile = runner.profile
        self.grid = profile.grid
        self.band_names = profile.band_names
        blocks = (runner.layout.chunk_rows, runner.layout.chunk_cols)
        self.zooms = block_zooms(self.grid, runner.block_shape, blocks, budget)
        self._pngs: OrderedDict[tuple[int, int, int], bytes | None] = OrderedDict()
        self.png_bytes = 0
        """Bytes of the rendered tiles kept."""
        self._lock = threading.Lock()

    def cached_tile(self, z: int, x: int, y: int) -> tuple[bool, bytes | None]:
        """``(True, png)`` when the tile was rendered before from all its blocks."""
        with self._lock:
            if (z, x, y) in self._pngs:
                self._pngs.move_to_end((z, x, y))
                return True, self._pngs[(z, x, y)]
        return False, None

    def _keep(self, key: tuple[int, int, int], png: bytes | None) -> bytes | None:
        with self._lock:
            self.png_bytes -= len(self._pngs.pop(key, None) or b"")
            self._pngs[key] = png
            self.png_bytes += len(png or b"")
            while len(self._pngs) > PNG_CACHE_TILES or self.png_bytes > PNG_CACHE_BYTES:
                self.png_bytes -= len(self._pngs.popitem(last=False)[1] or b"")
        return png

    def tilejson(self, url: str) -> dict[str, Any]:
        return tilejson(self.name, self.versioned(url), self.grid, self.zooms, block_budget=self.budget,
                        blocks=len(self.runner), block_shape=list(self.runner.block_shape))

    def identity(self) -> list[Any]:
        return [self.runner.key]

    async def tile(self, z: int, x: int, y: int, still_wanted: StillWanted | None = None) -> bytes | None:
        hit, png = self.cached_tile(z, x, y)
        if hit:
            return png
        window = tile_window(self.grid, z, x, y)
        if window is None:
            return None
        indexes = self.runner.blocks_for(window)
        if z < self.zooms.minzoom:  # the guard: never fan out into model calls
            return await to_thread.run_sync(self._overview, z, x, y, window, indexes)
        new = [i for i in indexes if not self.runner.is_ready(i)]
        if new and still_wanted is not None and not await still_wanted():
            return None  # the tile scrolled away before any work started for it
        blocks = await self._blocks(indexes, still_wanted)
        if blocks is None:
            return None
        png = await to_thread.run_sync(self._render, z, x, y, window, blocks, _step(window))
        return self._keep((z, x, y), png)

    async def _blocks(self, indexes: list[int], still_wanted: StillWanted | None) -> dict[int, np.ndarray] | None:
        """The blocks, computed where needed; None if the request went away meanwhile (then the blocks only it
        waited for are dropped from the queue, unless they already started)."""
        futures = {i: self.runner.submit(i, waiting=True) for i in indexes}
        gone = False
        try:
            pending = {asyncio.wrap_future(f): i for i, f in futures.items() if not f.done()}
            while pending:
                done, _ = await asyncio.wait(pending, timeout=POLL_S, return_when=asyncio.ALL_COMPLETED)
                for d in done:
                    pending.pop(d)
                    _consume(d)  # an error is raised below, from the block's own future
                if pending and still_wanted is not None and not await still_wanted():
                    gone = True
                    for w in pending:  # not cancelled: that would cancel the block for other requests too
                        w.add_done_callback(_consume)
                    return None
            return {i: f.result() for i, f in futures.items()}
        finally:
            for i in indexes:
                self.runner.release(i, abandon=gone)

    def _overview(self, z: int, x: int, y: int, window: Window, indexes: list[int]) -> bytes | None:
        """A tile made only from blocks already computed, decimated; the "zoom in" tile where there are none."""
        if len(indexes) > 64:  # far out: look only at the blocks that exist, not at every one the tile covers
            indexes = sorted(set(indexes) & self.runner.store.known())
        blocks = {}
        for i in indexes:
            data = self.runner.store.peek(i)
            if data is not None:
                blocks[i] = data
        if not blocks:
            return zoom_in_png()
        return self._render(z, x, y, window, blocks, _step(window))

    def _mosaic(self, window: Window, blocks: dict[int, np.ndarray], step: int) -> np.ndarray:
        """The shown band over ``window`` (every ``step``-th pixel) from ``blocks``; nodata where none."""
        r0, c0, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        nodata = self.runner.profile.nodata
        out = np.full((math.ceil(h / step), math.ceil(w / step)), nodata if nodata is not None else 0,
                      dtype=self.runner.profile.dtype)
        band = self.style.band - 1
        for index, data in blocks.items():
            b = self.runner.window(index)
            br, bc = int(b.row_off), int(b.col_off)
            rows = _strided(r0, h, br, int(b.height), step)
            cols = _strided(c0, w, bc, int(b.width), step)
            if rows is None or cols is None:
                continue
            (src_r, dst_r), (src_c, dst_c) = rows, cols
            out[dst_r, dst_c] = data[band, src_r, src_c]
        return out

    def _render(self, z: int, x: int, y: int, window: Window, blocks: dict[int, np.ndarray], step: int) -> bytes:
        data = self._mosaic(window, blocks, step)
        transform = self.grid.transform * Affine.translation(window.col_off, window.row_off) * Affine.scale(step)
        profile = self.runner.profile
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=data.shape[1], height=data.shape[0], count=1, dtype=data.dtype,
                          crs=self.grid.crs, transform=transform, nodata=profile.nodata) as ds:
                ds.write(data, 1)
            with mem.open() as ds, Reader(None, dataset=ds) as reader:
                try:
                    img = reader.tile(x, y, z, resampling_method="nearest", reproject_method="nearest")
                except TileOutsideBounds:
                    return None  # type: ignore[return-value]
        if isinstance(self.style, RangeStyle) and self.style.rescale is None:
            self.style.settle(data[None], _valid(data, profile.nodata))
        return self.style.render(img)

    def point(self, lon: float, lat: float) -> dict[str, Any] | None:
        px = _pixel(self.grid, lon, lat)
        if px is None:
            return None
        r, c = px
        index = self.runner.blocks_for(Window(c, r, 1, 1))[0]
        data = self.runner.store.peek(index)
        if data is None:
            return {"computed": False}
        b = self.runner.window(index)
        values = [float(v) for v in data[:, r - int(b.row_off), c - int(b.col_off)]]
        nodata = self.runner.profile.nodata
        values = [None if _is_nodata(v, nodata) else v for v in values]
        out = self.style.describe(values)
        out.update(computed=True, bands=list(self.band_names), row=r, col=c)
        return out

    def busy(self) -> bool:
        return self.runner.busy()

    def close(self, wait: bool = True) -> None:
        self.runner.close(wait)


def _consume(future: asyncio.Future) -> None:
    """Retrieve an abandoned wait's outcome, so asyncio does not report an error no one was there to see."""
    if not future.cancelled():
        future.exception()


def _step(window: Window) -> int:
    """Every how many pixels a mosaic keeps: 1 at and above the native zoom (exact), more below it."""
    return max(1, math.ceil(max(window.height, window.width) / OVERVIEW_PIXELS))


def _is_nodata(v: float, nodata: float | None) -> bool:
    return nodata is not None and (v == nodata or (math.isnan(nodata) and math.isnan(v)))


def _valid(data: np.ndarray, nodata: float | None) -> np.ndarray | None:
    if nodata is None:
        return None
    return ~np.isnan(data) if isinstance(nodata, float) and math.isnan(nodata) else data != nodata


def _strided(start: int, size: int, bstart: int, bsize: int, step: int) -> tuple[slice, slice] | None:
    """Along one axis: the slice of a block and of the decimated window that hold the window's pixels
    ``start, start + step, ...`` that fall in the block."""
    lo, hi = max(start, bstart), min(start + size, bstart + bsize)
    if hi <= lo:
        return None
    first = start + math.ceil((lo - start) / step) * step
    if first >= hi:
        return None
    n = math.ceil((hi - first) / step)
    d0 = (first - start) // step
    return slice(first - bstart, first - bstart + (n - 1) * step + 1, step), slice(d0, d0 + n)


def prediction_style(runner: BlockRunner, band: int | str | None = None, colormap: str | None = None,
                     rescale: tuple[float, float] | None = None, classes: dict[int, str] | None = None) -> Style:
    """The style of a prediction's band (default: the first model output): its class table, else a colormap (as
    when a colormap or a range is asked for, without class names)."""
    profile = runner.profile
    names = list(profile.band_names)
    first_output = len(names) - len(runner.job.outputs.band_names)
    index = _band_index(names, band, first_output)
    declared = _declared_band(runner, index, first_output)
    as_values = bool(colormap or rescale)
    if classes is None and not as_values and declared is not None and (declared.classes or declared.colors):
        classes = dict(declared.classes or ())
        values = sorted(set(classes) | {v for v, _ in declared.colors or ()})
        return ClassStyle({v: classes.get(v, str(v)) for v in values},
                          class_colors(values, dict(declared.colors or ())), band=index + 1)
    if classes:
        return ClassStyle(classes, class_colors(sorted(classes)), band=index + 1)
    return RangeStyle(check_colormap(colormap or "viridis"), [rescale] if rescale else None, band=index + 1,
                      label=names[index])


def _declared_band(runner: BlockRunner, index: int, first_output: int) -> Any:
    """The declared output band (its classes and colours) behind the prediction's band ``index`` (0-based); None
    for an appended input band."""
    start = first_output
    for declared, depth in zip(runner.profile.bands or (), runner.job.outputs.depths, strict=False):
        n = 1 if declared.dimensions == 0 else depth
        if start <= index < start + n:
            return declared
        start += n
    return None


def _band_index(names: Sequence[str], band: int | str | None, default: int) -> int:
    from ..errors import BandMismatchError

    if band is None:
        return default
    if isinstance(band, int) or str(band).isdigit():
        i = int(band) - 1
        if 0 <= i < len(names):
            return i
    elif band in names:
        return list(names).index(band)
    raise BandMismatchError(f"band {band!r} is not one of {list(names)}; give a name or a 1-based index")


class RasterLayer(Layer):
    """An existing raster read with rio-tiler: a prediction written earlier, or the input in true colour."""

    def __init__(self, path: str, style: Style, indexes: Sequence[int], name: str) -> None:
        self.path = path
        self.style = style
        self.indexes = tuple(indexes)
        self.name = name
        self._local = threading.local()
        stat = os.stat(path) if os.path.exists(path) else None
        self._identity = [path, stat.st_size if stat else None, stat.st_mtime_ns if stat else None, self.indexes]
        with rasterio.open(path) as ds:
            self.grid = Grid(ds.crs, ds.transform, (ds.height, ds.width))
            self.band_names = [ds.descriptions[i - 1] or f"b{i}" for i in self.indexes]
        check_georeferenced(self.grid, path)
        native = native_zoom(self.grid)
        # every zoom: the page and the widget ask for them all, and a TileJSON client shows nothing below minzoom
        self.zooms = Zooms(0, native, native + 4)

    def identity(self) -> list[Any]:
        return self._identity

    def _reader(self) -> Reader:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = Reader(self.path)
        return reader

    async def tile(self, z: int, x: int, y: int, still_wanted: StillWanted | None = None) -> bytes | None:
        return await to_thread.run_sync(self._tile, z, x, y)

    def _tile(self, z: int, x: int, y: int) -> bytes | None:
        reader = self._reader()
        try:
            img = reader.tile(x, y, z, indexes=self.indexes, resampling_method="nearest",
                              reproject_method="nearest")
        except TileOutsideBounds:
            return None
        return self.style.render(img)

    def point(self, lon: float, lat: float) -> dict[str, Any] | None:
        if _pixel(self.grid, lon, lat) is None:
            return None
        pt = self._reader().point(lon, lat, indexes=self.indexes)
        mask = np.ma.getmaskarray(pt.array)
        values = [None if m else float(v) for v, m in zip(pt.array.data, mask, strict=True)]
        out = self.style.describe(values)
        out["bands"] = list(self.band_names)
        return out

    def settle(self) -> None:
        """Take a continuous style's range from a preview of the whole raster."""
        if isinstance(self.style, RangeStyle) and self.style.rescale is None:
            img = self._reader().preview(indexes=self.indexes, max_size=512)
            self.style.settle(img.array.data, ~np.ma.getmaskarray(img.array)[0])


def raster_style(path: str, band: int = 1, colormap: str | None = None,
                 rescale: tuple[float, float] | None = None, classes: dict[int, str] | None = None) -> Style:
    """A finished raster's style: its colour table and class names (tilecast writes both), else a colormap (as
    when a colormap or a range is asked for, without class names).

    The style's ``band`` is 1: the layer reads only ``band``."""
    with rasterio.open(path) as ds:
        try:
            table = ds.colormap(band)
        except ValueError:
            table = None
        found = read_classes(ds).get(band)  # tilecast's class_names tag, GDAL's category names or RAT
    as_values = bool(colormap or rescale) and not classes
    names = classes or (found if found and not as_values else None)
    if table is not None and not as_values:
        values = sorted(names) if names else [v for v, c in table.items() if any(c) and v < 256][:64]
        return ClassStyle({v: (names or {}).get(v, str(v)) for v in values},
                          class_colors(values, {v: table[v] for v in values if v in table}))
    if names:
        return ClassStyle(names, class_colors(sorted(names)))
    return RangeStyle(check_colormap(colormap or "viridis"), [rescale] if rescale else None)
