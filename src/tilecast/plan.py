"""The tile plan: pure geometry, no I/O.

Given an input grid, the model's tile geometry and a region, a :class:`TilePlan` says for every tile which input
pixels to read (with the halo), how much padding the raster edge needs, and where its output goes. Every runner
(local threads, Dask) executes the same plan, so all scale and edge arithmetic lives here and only here.

Conventions, as in Earth Engine: sizes are ``(x, y)`` = ``(width, height)``; arrays are row-major, y first.
``overlap`` is per edge: the model sees ``tile + 2 * overlap`` pixels per axis.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from affine import Affine
from rasterio.windows import Window

from .errors import RegionError, SpecError

if TYPE_CHECKING:
    from .runtimes.base import TensorSpec

__all__ = ["AUTO", "PIXEL_TILE", "XY", "Tile", "TileGeometry", "TilePlan", "cover_window", "footprint_ranges",
           "infer_layout", "is_auto", "parse_resolution", "parse_size", "parse_tile_size", "spatial_shape",
           "window_from_bounds", "xy"]

OverlapMode = Literal["per_edge", "total"]


class XY(NamedTuple):
    """An ``(x, y)`` pair: width before height, as Earth Engine writes tile sizes."""

    x: int
    y: int


def _pair(value: Any, name: str, number: type, example: str) -> tuple[Any, Any]:
    """One number for both axes, or two (width, height): as a number, a string or a sequence."""
    if isinstance(value, str):
        parts: Any = re.split(r"\s*[,x]\s*|\s+", value.strip())  # an empty part ("16," or "16,x") is an error
    elif isinstance(value, (bool, type(None))):
        parts = None
    elif isinstance(value, numbers.Number):
        parts = [value]
    else:
        try:
            parts = list(value)
        except TypeError:
            parts = None
    try:
        if parts is None or not 1 <= len(parts) <= 2:
            raise ValueError
        nums = [number(float(p)) if number is float else _whole(p) for p in parts]
    except (TypeError, ValueError):
        a, b = example.split(",")
        raise SpecError(
            f"{name} must be one number or a width,height pair: {a} or {a},{b} on the command line, {a} or "
            f"({a}, {b}) in Python; got {value!r}"
        ) from None
    return (nums[0], nums[-1])


def _whole(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def parse_size(value: int | str | Sequence[int], name: str = "size") -> XY:
    """The one reader of pixel sizes: ``256``, ``"256"``, ``"256,128"`` (also ``256x128``), ``(w, h)``, ``[w, h]``.

    Width comes first, as in Earth Engine's ``inputTileSize``; one number is used for both axes.
    """
    return XY(*_pair(value, name, int, "256,128"))


AUTO = "auto"
"""The tile size that asks tilecast to choose (see :mod:`tilecast.autotile`)."""


def is_auto(value: object) -> bool:
    """Whether ``value`` asks for an automatic tile (``"auto"``, any case)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def parse_tile_size(value: int | str | Sequence[int], name: str = "input_tile_size") -> XY | str:
    """:func:`parse_size`, or :data:`AUTO` for ``"auto"`` (the largest tile the model and the memory take)."""
    return AUTO if is_auto(value) else parse_size(value, name)


def parse_resolution(value: float | str | Sequence[float], name: str = "resolution") -> tuple[float, float]:
    """A pixel size ``(x, y)`` in CRS units from one number or two, read like :func:`parse_size`."""
    return _pair(value, name, float, "10,10")


def xy(value: int | Sequence[int], name: str = "size") -> XY:
    """Accept ``256`` or ``[256, 128]`` (width, height); see :func:`parse_size`."""
    return parse_size(value, name)


NO_OVERLAP = XY(0, 0)
PIXEL_TILE = 256
"""The block a per-pixel (tabular) model is fed when nothing fixes it: any size works."""


def infer_layout(
    inputs: Sequence[TensorSpec],
    bands: Sequence[str] | int | None = None,
    *,
    padded: XY | None = None,
    array_inputs: Collection[str] = (),
    dim_order: Sequence[str] | None = None,
    fallback: str | None = None,
) -> str:
    """How bands feed a model's inputs: ``bands`` (one input per band), ``NCHW``, ``NHWC`` or ``pixels``.

    The one place that reads a layout off a model. ``bands`` are the band names (inputs named after them, or after
    ``array_inputs``, mean Earth Engine's per-band layout) or only their count; ``padded`` is the input tile size when
    known; ``dim_order`` is a model card's MLM ``dim_order``, which says it outright. Most specific evidence first:
    the band count, then the tile size, then which axis is fixed. Without a band count two equal axes are the height
    and width, else the channels are taken to be the short leading axis. When nothing decides, ``fallback`` is
    returned, else a single band is ``NHWC`` and more raise :class:`SpecError`.
    """
    names = set() if bands is None or isinstance(bands, int) else set(bands)
    count = None if bands is None else bands if isinstance(bands, int) else len(bands)
    if len(inputs) != 1 or {t.name for t in inputs} & (names | set(array_inputs)):
        return "bands"
    if dim_order is not None:
        if len(dim_order) == 2:
            return "pixels"
        return "NCHW" if list(dim_order[:2]) in (["batch", "channel"], ["batch", "bands"]) else "NHWC"
    shape = inputs[0].shape
    if shape is not None and len(shape) == 2 and (count is None or shape[1] in (None, count)):
        return "pixels"
    if shape is None or len(shape) != 4:
        return fallback or "bands"
    first, last = shape[1], shape[3]
    if count is None:  # equal height and width mark the spatial axes; else the channels are a short leading axis
        nhwc, nchw = first is not None and first == shape[2] != last, last is not None and last == shape[2] != first
        if nhwc != nchw:
            return "NHWC" if nhwc else "NCHW"
        return "NCHW" if first in range(1, 9) and last not in range(1, 5) else "NHWC"
    checks = [(first == count and last != count, last == count and first != count)]
    if padded is not None:
        checks.append((tuple(shape[2:]) == (padded.y, padded.x), tuple(shape[1:3]) == (padded.y, padded.x)))
    checks.append((first is not None and last is None, last is not None and first is None))
    for channels_first, channels_last in checks:
        if channels_first != channels_last:
            return "NCHW" if channels_first else "NHWC"
    if fallback:
        return fallback
    if count == 1:
        return "NHWC"
    raise SpecError(
        f"cannot tell the layout of input {inputs[0].describe()} for {count} bands; pass layout='NCHW' or 'NHWC' "
        "(--layout)"
    )


def spatial_shape(shape: Sequence[int | None], layout: str) -> tuple[int | None, int | None]:
    """``(height, width)`` of a 4-D input tensor in ``layout``."""
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


@dataclass(frozen=True)
class TileGeometry:
    """The model's tile geometry: core tile, per-edge overlap and output tile, all ``(x, y)``."""

    tile: XY
    overlap: XY = NO_OVERLAP
    output_tile: XY | None = None

    @classmethod
    def create(
        cls,
        tile: int | Sequence[int],
        overlap: int | Sequence[int] = 0,
        output_tile: int | Sequence[int] | None = None,
        overlap_mode: OverlapMode = "per_edge",
    ) -> TileGeometry:
        """Validate Earth Engine's ``inputTileSize``, ``inputOverlapSize`` and ``outputTileSize``.

        ``overlap_mode="total"`` reads ``overlap`` as the sum over both edges (Earth Engine's guide), so it must be
        even and half of it goes to each side.
        """
        if is_auto(tile):
            raise SpecError("input_tile_size='auto' is chosen per image by a Model (Model(..., input_tile_size="
                            "'auto'), --tile auto); a TileGeometry needs a size, e.g. 256")
        t = xy(tile, "input_tile_size")
        o = xy(overlap, "input_overlap_size")
        out = t if output_tile is None else xy(output_tile, "output_tile_size")
        if min(t) <= 0 or min(out) <= 0:
            raise SpecError(f"tile sizes must be positive, got input {tuple(t)} and output {tuple(out)}")
        if min(o) < 0:
            raise SpecError(f"input_overlap_size must be >= 0, got {tuple(o)}")
        if overlap_mode == "total":
            if o.x % 2 or o.y % 2:
                raise SpecError(
                    f"overlap_mode='total' splits the overlap between both edges, so it must be even; "
                    f"got {tuple(o)}. Use {[o.x + o.x % 2, o.y + o.y % 2]} or overlap_mode='per_edge'."
                )
            o = XY(o.x // 2, o.y // 2)
        elif overlap_mode != "per_edge":
            raise SpecError(f"overlap_mode must be 'per_edge' or 'total', got {overlap_mode!r}")
        return cls(t, o, out)

    @classmethod
    def from_signature(
        cls,
        inputs: Sequence[TensorSpec],
        layout: str | None = None,
        overlap: int | Sequence[int] = 0,
        output_tile: int | Sequence[int] | None = None,
        overlap_mode: OverlapMode = "per_edge",
    ) -> TileGeometry:
        """The geometry of a model whose input has a fixed height and width: that size less the overlap.

        The one place that derives ``input_tile_size`` from a model. A per-pixel (tabular) model takes any block
        (:data:`PIXEL_TILE`); a model that accepts any size raises :class:`SpecError` asking for the tile.
        """
        halo = cls.create(1, overlap, None, overlap_mode).overlap
        tile: XY | None = XY(PIXEL_TILE, PIXEL_TILE) if layout == "pixels" else None
        for t in inputs if tile is None else ():
            if t.shape and len(t.shape) == 2:
                tile = XY(PIXEL_TILE, PIXEL_TILE)
                break
            if t.shape and len(t.shape) == 4:
                h, w = spatial_shape(t.shape, layout or infer_layout([t]))
                if h is not None and w is not None:
                    tile = cls.core_for(XY(w, h), halo)
                    break
        if tile is None:
            raise SpecError(
                "input_tile_size is required (Earth Engine's inputTileSize, [width, height]): the model accepts any "
                "tile size. Pass e.g. input_tile_size=256 (--tile 256)"
            )
        return cls.create(tile, overlap, output_tile, overlap_mode)

    @staticmethod
    def core_for(padded: XY, overlap: XY) -> XY:
        """The core tile that, with ``overlap`` per edge, fills ``padded`` pixels (the inverse of :attr:`padded`)."""
        return XY(padded.x - 2 * overlap.x, padded.y - 2 * overlap.y)

    @property
    def out(self) -> XY:
        return self.output_tile or self.tile

    @property
    def padded(self) -> XY:
        """The input tensor's spatial size: tile plus overlap on both edges."""
        return XY(self.tile.x + 2 * self.overlap.x, self.tile.y + 2 * self.overlap.y)

    @property
    def scale(self) -> tuple[Fraction, Fraction]:
        """Output pixels per input pixel, ``(x, y)``."""
        return Fraction(self.out.x, self.tile.x), Fraction(self.out.y, self.tile.y)

    @property
    def output_overlap(self) -> XY | None:
        """Per-edge overlap in output pixels, or None when it is not a whole number of pixels."""
        sx, sy = self.scale
        ox, oy = self.overlap.x * sx, self.overlap.y * sy
        if ox.denominator != 1 or oy.denominator != 1:
            return None
        return XY(int(ox), int(oy))

    @property
    def padded_output(self) -> XY | None:
        """The output size a fully convolutional model returns for a padded tile, if whole."""
        oo = self.output_overlap
        if oo is None:
            return None
        return XY(self.out.x + 2 * oo.x, self.out.y + 2 * oo.y)


@dataclass(frozen=True)
class Tile:
    """One tile of a plan. Windows are in input-grid or output-grid pixels; offsets are ``(row, col)``."""

    row: int
    col: int
    read: Window
    """Input pixels to read, clipped to the input grid; includes the halo."""
    pad: tuple[tuple[int, int], tuple[int, int]]
    """``((top, bottom), (left, right))`` pixels outside the input grid, filled by padding."""
    out: Window
    """Where the tile's cropped output goes in the output grid (clipped to it)."""
    blend_out: Window
    """Where the tile's padded output goes in the output grid (clipped); only for blending."""
    blend_offset: tuple[int, int]
    """Offset of ``blend_out`` inside the padded model output."""
    edges: tuple[bool, bool, bool, bool]
    """Whether the tile touches the region's ``(top, bottom, left, right)`` edge."""


@dataclass(frozen=True)
class TilePlan:
    """Tiles covering ``region`` of an input grid of ``shape`` ``(height, width)``, row-major."""

    shape: tuple[int, int]
    geometry: TileGeometry
    region: Window

    @classmethod
    def create(
        cls, shape: tuple[int, int], geometry: TileGeometry, region: Window | None = None
    ) -> TilePlan:
        h, w = shape
        if h <= 0 or w <= 0:
            raise RegionError(f"the input grid is empty ({w} x {h} pixels)")
        full = Window(0, 0, w, h)
        if region is None:
            region = full
        region = cover_window(region)
        try:
            clipped = region.intersection(full)
        except Exception:
            clipped = None
        if clipped is None or clipped.width <= 0 or clipped.height <= 0 or clipped != region:
            raise RegionError(
                f"the region (col {region.col_off}, row {region.row_off}, {region.width} x {region.height}) is not "
                f"inside the input grid of {w} x {h} pixels; "
                "choose bounds or a window that lie within the raster"
            )
        return cls((h, w), geometry, region)

    @property
    def tile_rows(self) -> int:
        return math.ceil(self.region.height / self.geometry.tile.y)

    @property
    def tile_cols(self) -> int:
        return math.ceil(self.region.width / self.geometry.tile.x)

    def __len__(self) -> int:
        return self.tile_rows * self.tile_cols

    @property
    def output_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the output grid, which covers the region (rounded up)."""
        sx, sy = self.geometry.scale
        return math.ceil(self.region.height * sy), math.ceil(self.region.width * sx)

    def output_transform(self, input_transform: Affine) -> Affine:
        """The output grid's transform: the region's origin, pixel size scaled by ``tile / output_tile``."""
        g = self.geometry
        return (
            input_transform
            * Affine.translation(self.region.col_off, self.region.row_off)
            * Affine.scale(g.tile.x / g.out.x, g.tile.y / g.out.y)
        )

    def rows_final_after(self, tile_row: int, blend: bool) -> int:
        """Output rows ``[0, n)`` that no tile after ``tile_row`` writes to."""
        out_h = self.output_shape[0]
        if tile_row >= self.tile_rows - 1:
            return out_h
        start_next = (tile_row + 1) * self.geometry.out.y
        if blend:
            oo = self.geometry.output_overlap
            start_next -= oo.y if oo else 0
        return max(0, min(out_h, start_next))

    def tile(self, row: int, col: int) -> Tile:
        g = self.geometry
        (tw, th), (ox, oy), (otw, oth) = g.tile, g.overlap, g.out
        h, w = self.shape
        out_h, out_w = self.output_shape
        r0 = self.region.row_off + row * th - oy
        c0 = self.region.col_off + col * tw - ox
        r1, c1 = r0 + th + 2 * oy, c0 + tw + 2 * ox
        rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        read = Window(cc0, rr0, max(cc1 - cc0, 0), max(rr1 - rr0, 0))
        pad = ((rr0 - r0, r1 - rr1), (cc0 - c0, c1 - cc1))
        orow, ocol = row * oth, col * otw
        out = Window(ocol, orow, min(otw, out_w - ocol), min(oth, out_h - orow))
        oo = g.output_overlap or XY(0, 0)
        br0, bc0 = orow - oo.y, ocol - oo.x
        br1, bc1 = orow + oth + oo.y, ocol + otw + oo.x
        cbr0, cbc0, cbr1, cbc1 = max(br0, 0), max(bc0, 0), min(br1, out_h), min(bc1, out_w)
        blend_out = Window(cbc0, cbr0, cbc1 - cbc0, cbr1 - cbr0)
        edges = (row == 0, row == self.tile_rows - 1, col == 0, col == self.tile_cols - 1)
        return Tile(row, col, read, pad, out, blend_out, (cbr0 - br0, cbc0 - bc0), edges)

    def tiles(self) -> Iterator[Tile]:
        for r in range(self.tile_rows):
            for c in range(self.tile_cols):
                yield self.tile(r, c)


def footprint_ranges(n_out: int, n_in: int, scale: Fraction) -> list[tuple[int, int]]:
    """For each output pixel along one axis, the input pixel range ``[start, stop)`` it covers.

    ``scale`` is output pixels per input pixel; ranges are clipped to ``[0, n_in)`` and never empty.
    """
    ranges = []
    for i in range(n_out):
        start = math.floor(Fraction(i) / scale)
        stop = math.ceil(Fraction(i + 1) / scale)
        start, stop = min(start, n_in - 1), min(max(stop, start + 1), n_in)
        ranges.append((start, stop))
    return ranges


def cover_window(window: Window) -> Window:
    """The smallest whole-pixel window that covers ``window``. A fractional window (what rasterio's ``from_bounds``
    returns) reaches out to every pixel it touches, as ``bounds`` do, instead of being cut short; an offset or size
    within 1e-6 px of a whole number is that number (floating-point noise, not a sliver of the next pixel)."""
    values = (window.col_off, window.row_off, window.width, window.height)
    if not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
        raise RegionError(f"the window {window!r} has an offset or size that is not a finite number; give a Window "
                          "(col_off, row_off, width, height) in pixels inside the raster")
    col, row, width, height = map(float, values)
    c0, r0, c1, r1 = (math.floor(col + 1e-6), math.floor(row + 1e-6), math.ceil(col + width - 1e-6),
                      math.ceil(row + height - 1e-6))
    return Window(c0, r0, max(c1 - c0, 0), max(r1 - r0, 0))


def window_from_bounds(
    bounds: Sequence[float], transform: Affine, shape: tuple[int, int]
) -> Window:
    """The smallest whole-pixel window that covers ``(left, bottom, right, top)``, clipped to the grid."""
    if len(bounds) != 4 or not all(math.isfinite(float(v)) for v in bounds):
        raise RegionError(f"bounds must be four finite numbers (left, bottom, right, top), got {tuple(bounds)}")
    left, bottom, right, top = bounds
    if not (right > left and top > bottom):
        raise RegionError(f"bounds must be (left, bottom, right, top) with left < right and bottom < top, got {bounds}")
    inv = ~transform
    xs, ys = zip(*(inv * (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    eps = 1e-6
    c0, c1 = math.floor(min(xs) + eps), math.ceil(max(xs) - eps)
    r0, r1 = math.floor(min(ys) + eps), math.ceil(max(ys) - eps)
    h, w = shape
    c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
    if c1 <= c0 or r1 <= r0:
        raise RegionError(
            f"the bounds {tuple(bounds)} do not overlap the raster; give bounds in the raster's CRS "
            "(or set bounds_crs / --bounds-crs) that intersect it"
        )
    return Window(c0, r0, c1 - c0, r1 - r0)
