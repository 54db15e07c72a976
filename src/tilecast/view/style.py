"""How a layer's values become colours: a class table, a named colormap with a rescale range, or true colour.

rio-tiler does the colouring and the PNG encoding (``ImageData.render``); this module decides which colours and
which range, and describes them for the page's legend.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from rio_tiler.colormap import cmap as colormaps
from rio_tiler.models import ImageData

from .errors import UnknownColormapError

__all__ = ["ClassStyle", "RangeStyle", "Style", "check_colormap", "class_colors", "zoom_in_png"]

DEFAULT_COLORMAP = "viridis"
PNG_ZLEVEL = 1
"""zlib level of the tiles: they travel over loopback, where encoding time matters more than size."""
CLASS_PALETTE = "tab20"
"""Classes without colours of their own take colours from this rio-tiler colormap, in order."""


def check_colormap(name: str) -> str:
    """The colormap name as rio-tiler knows it, or an error that lists some."""
    key = name.lower()
    if key not in colormaps.list():
        some = ", ".join(sorted(c for c in colormaps.list() if not c.endswith("_r"))[:12])
        raise UnknownColormapError(
            f"unknown colormap {name!r}; use one of rio-tiler's colormaps, e.g. {some} (append _r to reverse)"
        )
    return key


def class_colors(
    values: Sequence[int], colors: Mapping[int, Sequence[int]] | None = None
) -> dict[int, tuple[int, int, int, int]]:
    """An RGBA colour per class value: the given ones, the others from :data:`CLASS_PALETTE` in order."""
    table = colormaps.get(CLASS_PALETTE)
    steps = 20
    out: dict[int, tuple[int, int, int, int]] = {}
    spare = 0
    for v in values:
        given = (colors or {}).get(v)
        if given is not None:
            rgba = (*tuple(int(c) for c in given[:4]), 255)[:4]
        else:
            rgba = tuple(table[int((spare % steps + 0.5) * 256 / steps)])
            spare += 1
        out[int(v)] = (int(rgba[0]), int(rgba[1]), int(rgba[2]), int(rgba[3]))
    return out


def _hex(rgba: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in rgba[:3])


class Style:
    """Colours one layer's tiles; ``legend()`` is what the page draws."""

    band: int = 1
    """1-based band of the layer's data that is shown."""

    def render(self, img: ImageData) -> bytes:
        raise NotImplementedError

    def legend(self) -> dict[str, Any]:
        return {"kind": "none"}

    def describe(self, values: Sequence[float]) -> dict[str, Any]:
        """The pixel values under the cursor, with class names where there are some."""
        return {"values": [None if v is None else float(v) for v in values]}


@dataclass
class ClassStyle(Style):
    """A class map: each value its colour; values outside the table are transparent."""

    classes: dict[int, str]
    colors: dict[int, tuple[int, int, int, int]]
    band: int = 1

    def __post_init__(self) -> None:
        # rio-tiler colours through a lookup table when given all 256 entries, else value by value (slower)
        if all(0 <= v < 256 for v in self.colors):
            self._table = {v: self.colors.get(v, (0, 0, 0, 0)) for v in range(256)}
        else:
            self._table = self.colors

    def render(self, img: ImageData) -> bytes:
        # the lookup table casts values to uint8 first: other types (a class band in a float32 raster beside a
        # score band) are coloured value by value, so 257 never passes for 1, nor 2.5 for 2
        table = self._table if img.array.dtype == np.uint8 else self.colors
        return img.render(img_format="PNG", colormap=table, ZLEVEL=PNG_ZLEVEL)

    def legend(self) -> dict[str, Any]:
        items = [{"value": v, "name": self.classes.get(v, str(v)), "color": _hex(c)} for v, c in self.colors.items()]
        return {"kind": "classes", "items": items}

    def describe(self, values: Sequence[float]) -> dict[str, Any]:
        out = super().describe(values)
        v = values[self.band - 1] if len(values) >= self.band else None
        if v is not None and not np.isnan(v) and int(v) in self.classes:
            out["class"] = self.classes[int(v)]
        return out


@dataclass
class RangeStyle(Style):
    """Continuous values (or true colour, with three bands): rescaled to 0-255, then a colormap if one band.

    ``rescale``: one ``(min, max)`` per shown band; None until :meth:`settle` takes it from the first data seen, so
    that every tile of the session uses the same range.
    """

    colormap: str | None = DEFAULT_COLORMAP
    rescale: list[tuple[float, float]] | None = None
    band: int = 1
    label: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def settle(self, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Fix the range from ``data`` (``(bands, h, w)``): its 2nd-98th percentiles, per band."""
        with self._lock:
            if self.rescale is not None:
                return
            ranges = []
            for b in data:
                vals = b[valid] if valid is not None else b.ravel()
                vals = vals[np.isfinite(vals)] if vals.dtype.kind == "f" else vals
                lo, hi = (float(x) for x in np.percentile(vals, (2, 98))) if vals.size else (0.0, 1.0)
                ranges.append((lo, hi if hi > lo else lo + 1.0))
            self.rescale = ranges

    def render(self, img: ImageData) -> bytes:
        if img.array.dtype.kind == "f":  # NaN is no value even where nodata is another number: transparent, not
            nan = np.isnan(img.array.data)  # the colour of the range's low end
            if nan.any():
                img.array.mask = np.ma.getmaskarray(img.array) | nan
        if self.rescale is None:
            self.settle(img.array.data, ~np.ma.getmaskarray(img.array)[0])
        ranges = self.rescale or [(0.0, 1.0)]
        if len(ranges) < img.count:
            ranges = ranges + [ranges[-1]] * (img.count - len(ranges))
        with np.errstate(invalid="ignore"):  # a NaN nodata is the masked arrays' fill value; it is cast too
            img = img.rescale(in_range=ranges[: img.count])
        cmap = colormaps.get(self.colormap) if self.colormap and img.count == 1 else None
        return img.render(img_format="PNG", colormap=cmap, ZLEVEL=PNG_ZLEVEL)

    def legend(self) -> dict[str, Any]:
        if not self.colormap:
            return {"kind": "rgb"}
        table = colormaps.get(self.colormap)
        stops = [_hex(table[i]) for i in range(0, 256, 32)] + [_hex(table[255])]
        lo, hi = (self.rescale or [(None, None)])[0]
        return {"kind": "range", "colormap": self.colormap, "stops": stops, "min": lo, "max": hi, "label": self.label}


@lru_cache(maxsize=1)
def zoom_in_png(size: int = 256) -> bytes:
    """The tile served below a prediction layer's ``minzoom`` where nothing is computed: hatched, with words."""
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx + yy) // 12) % 2 == 0
    rgba = np.zeros((4, size, size), dtype=np.uint8)
    rgba[:3] = 90
    rgba[3] = np.where(stripes, 70, 25)
    try:
        from PIL import Image, ImageDraw
    except ImportError:  # Pillow is optional: the stripes alone, and the page says why
        pass
    else:
        image = Image.fromarray(np.moveaxis(rgba, 0, -1), "RGBA")
        draw = ImageDraw.Draw(image)
        for i, line in enumerate(("zoom in", "to predict")):
            draw.rectangle((size // 2 - 62, size // 2 - 26 + 26 * i, size // 2 + 62, size // 2 - 2 + 26 * i),
                           fill=(255, 255, 255, 220))
            draw.text((size // 2, size // 2 - 14 + 26 * i), line, fill=(20, 20, 20, 255), anchor="mm",
                      font_size=18)
        rgba = np.moveaxis(np.asarray(image), -1, 0).copy()
    return _png_rgba(rgba)


def _png_rgba(rgba: np.ndarray) -> bytes:
    """Encode a ``(4, h, w)`` uint8 array as PNG with rio-tiler's encoder (the 4th band is alpha)."""
    from rio_tiler.utils import render

    return render(rgba[:3], mask=rgba[3], img_format="PNG")
