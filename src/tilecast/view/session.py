"""What one map shows: its layers (the prediction, the input in true colour) and the page's settings.

:func:`from_prediction` builds a map of a planned :class:`~tilecast.prediction.Prediction` (computed on demand);
:func:`from_raster` one of a raster that exists already (a written prediction, with its colour table).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import rasterio
from rasterio.enums import ColorInterp

from ..autotile import parse_bytes
from ..errors import BandMismatchError, SpecError
from ..sources.base import Grid
from ..sources.rasterio_source import RasterioSource, open_dataset, reopenable
from .blocks import BlockRunner
from .diskcache import DEFAULT_DISK_BYTES
from .style import RangeStyle
from .tiles import DEFAULT_BUDGET, Layer, PredictionLayer, RasterLayer, prediction_style, raster_style
from .zooms import check_georeferenced, lonlat_extent

if TYPE_CHECKING:
    from ..prediction import Prediction

__all__ = ["MapView", "ViewOptions", "from_prediction", "from_raster", "true_color_bands"]

COMMON_RGB = (("red", "r"), ("green", "g"), ("blue", "b"))
RECENT_ERRORS = 20
"""Failed tiles remembered for the page (``/stats.json``)."""


@dataclass
class ViewOptions:
    """How layers look and how much a request may compute (the ``tilecast view`` flags)."""

    band: int | str | None = None
    """Band of the prediction (or raster) to show: name or 1-based index; default the first model output."""
    colormap: str | None = None
    rescale: tuple[float, float] | None = None
    classes: dict[int, str] | Sequence[str] | None = None
    """Class names by value, or a list of names for values 0, 1, ..."""
    rgb: Sequence[int | str] | None = None
    """Input bands shown as red, green, blue (1-based indexes or names); default from colour interpretation."""
    basemap: str | None = None
    """An XYZ tile URL drawn under the layers; none by default (the page stays offline)."""
    block_size: int | tuple[int, int] | None = None
    budget: int = DEFAULT_BUDGET
    cache_dir: str | os.PathLike | bool | None = None
    cache_size: int | str | None = DEFAULT_DISK_BYTES
    """The most the disk cache may hold, every prediction together (bytes, or ``"10GiB"``); the least recently
    used blocks are deleted beyond it. None: unbounded."""
    memory_bytes: int = 256 * 2**20
    workers: int = 2
    """Blocks computed at once: while one block's tiles are inferred, the next one's are read."""

    def __post_init__(self) -> None:
        if self.classes is not None and not isinstance(self.classes, dict):  # ["water", "forest"]: values 0, 1...
            self.classes = dict(enumerate(self.classes))
        sizes = (self.block_size,) if isinstance(self.block_size, int) else self.block_size or ()
        if any(int(v) < 1 for v in sizes):  # 0 fell back to the default unnoticed
            raise SpecError(f"--block-size {self.block_size!r}: give a positive number of pixels, e.g. 512")
        if self.cache_size is not None:
            self.cache_size = parse_bytes(self.cache_size, "cache_size (--cache-size)")
        if self.rescale is not None and not (len(self.rescale) == 2 and self.rescale[1] > self.rescale[0]):
            raise SpecError(f"rescale={self.rescale!r}: give (min, max) with max greater than min, e.g. (0, 1)")


@dataclass
class MapView:
    """The layers of one map, the first being the main one (``/tilejson.json``)."""

    layers: dict[str, Layer]
    title: str
    basemap: str | None = None
    notes: list[str] = field(default_factory=list)
    errors: deque[dict[str, str]] = field(default_factory=lambda: deque(maxlen=RECENT_ERRORS))
    """The last tiles that failed (layer, ``z/x/y``, error), for the page to show."""

    @property
    def main(self) -> Layer:
        return next(iter(self.layers.values()))

    def config(self, base: str) -> dict[str, Any]:
        """What the page needs: each layer's TileJSON URL, legend and zoom guard, and the map's bounds."""
        layers = []
        for key, layer in self.layers.items():
            prefix = "" if layer is self.main else f"{key}/"
            layers.append({"id": key, "name": layer.name, "tilejson": f"{base}{prefix}tilejson.json",
                           "legend": layer.style.legend(), "minzoom": layer.zooms.minzoom,
                           "maxzoom": layer.zooms.maxzoom, "guarded": isinstance(layer, PredictionLayer)})
        return {"title": self.title, "basemap": self.basemap, "bounds": list(lonlat_extent(self.main.grid)),
                "layers": layers,
                "notes": self.notes}

    def busy(self) -> bool:
        """Whether a layer is computing a block."""
        return any(layer.busy() for layer in self.layers.values())

    def close(self, wait: bool = True) -> None:
        """Release the layers; ``wait=False`` leaves blocks under way to finish on their own."""
        for layer in self.layers.values():
            layer.close(wait)


def _has_colormap(ds: rasterio.io.DatasetReader, band: int) -> bool:
    try:
        ds.colormap(band)
    except ValueError:
        return False
    return True


def true_color_bands(path: str, rgb: Sequence[int | str] | None = None) -> list[int]:
    """1-based indexes of the bands shown as red, green, blue (or one grey band)."""
    with rasterio.open(path) as ds:
        names = [d or f"b{i + 1}" for i, d in enumerate(ds.descriptions)]
        interp = list(ds.colorinterp)
        count = ds.count
    if rgb:
        out = []
        for b in rgb:
            if isinstance(b, int) or str(b).isdigit():
                i = int(b)
            elif b in names:
                i = names.index(b) + 1
            else:
                raise BandMismatchError(f"--rgb: band {b!r} is not one of {names}; give names or 1-based indexes")
            if not 1 <= i <= count:
                raise BandMismatchError(f"--rgb: band {i} is outside 1..{count}")
            out.append(i)
        if len(out) not in (1, 3):
            raise BandMismatchError(f"--rgb takes 3 bands (red, green, blue) or 1 (grey), got {len(out)}")
        return out
    by_interp = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
    if len(by_interp) == 3:
        return by_interp
    lower = [n.lower() for n in names]
    by_name = [next((lower.index(a) + 1 for a in aliases if a in lower), 0) for aliases in COMMON_RGB]
    if all(by_name):
        return by_name
    return [1, 2, 3] if count >= 3 else [1]


def _input_layer(path: str, rgb: Sequence[int | str] | None, name: str = "input") -> RasterLayer:
    bands = true_color_bands(path, rgb)
    layer = RasterLayer(path, RangeStyle(colormap=None if len(bands) == 3 else "greys_r"), bands, name)
    layer.settle()
    return layer


def from_prediction(prediction: Prediction, options: ViewOptions | None = None, title: str = "") -> MapView:
    """A map of ``prediction``, computed block by block as the map asks for it."""
    o = options or ViewOptions()
    check_georeferenced(prediction.grid, "the prediction's grid")
    runner = BlockRunner(prediction, block_size=o.block_size, cache_dir=o.cache_dir, memory_bytes=o.memory_bytes,
                         workers=o.workers, disk_bytes=None if o.cache_size is None else int(o.cache_size))
    try:
        style = prediction_style(runner, o.band, o.colormap, o.rescale, o.classes)
        layers: dict[str, Layer] = {"prediction": PredictionLayer(runner, style, o.budget)}
    except BaseException:
        runner.close()
        raise
    source = prediction.source
    notes = []
    if isinstance(source, RasterioSource) and reopenable(source.path):
        layers["input"] = _input_layer(source.path, o.rgb)
    else:
        notes.append("the input is not a single raster file, so it is not shown")
    return MapView(layers, title or "tilecast prediction", o.basemap, notes)


def from_raster(path: str | os.PathLike, options: ViewOptions | None = None) -> MapView:
    """A map of a raster that exists (for example a prediction written before), styled by its colour table."""
    o = options or ViewOptions()
    path = str(path)
    ds = open_dataset(path)
    with ds:
        grid = Grid(ds.crs, ds.transform, (ds.height, ds.width))
        names = [d or f"b{i + 1}" for i, d in enumerate(ds.descriptions)]
    check_georeferenced(grid, path)
    band = 1
    if o.band is not None:
        band = int(o.band) if str(o.band).isdigit() else (names.index(str(o.band)) + 1 if o.band in names else 0)
        if not 1 <= band <= len(names):
            raise BandMismatchError(f"band {o.band!r} is not one of {names}; give a name or a 1-based index")
    with rasterio.open(path) as ds:
        has_table = _has_colormap(ds, band)
        count = ds.count
    plain = o.band is None and not (o.colormap or o.classes or has_table)
    if o.rgb or (plain and count >= 3):  # a multi-band image without a colour table: true colour
        layer = _input_layer(path, o.rgb, os.path.basename(path))
    else:
        layer = RasterLayer(path, raster_style(path, band, o.colormap, o.rescale, o.classes), [band],
                            os.path.basename(path))
        layer.settle()
    return MapView({"raster": layer}, os.path.basename(path), o.basemap)
