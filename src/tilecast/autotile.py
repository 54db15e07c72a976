"""``input_tile_size="auto"``: the pure part of choosing a tile (candidates, memory arithmetic, overlap overhead).

A larger tile wastes less on its halo: a 256-px tile with 16 px per edge computes ``(288/256)**2 = 1.27`` times the
pixels it keeps, a 1024-px tile 1.06 times. But a tile costs memory (a batch of activations per model stream, the
tiles queued around it, a row of output tiles), and a region only a few tiles wide pays for tiles that are mostly
padding, and for a last tile that runs on one model stream while the others idle. This module scores candidate
tiles by the pixels a run computes and keeps those that fit a memory budget; :mod:`tilecast.autoprobe` measures
the model and probes the sizes with real calls. Nothing here touches a model or a file, so every rule is tested on
its own.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import SpecError
from .plan import AUTO, XY, is_auto

__all__ = [
    "AUTO", "BATCH_PIXELS", "DEFAULT_MULTIPLE", "NICE_TILES", "ONE_STREAM_PIXELS", "PROBE_TILES", "TILE_COST_PIXELS",
    "AutoTile",
    "Footprint", "TileChoice", "auto_batch", "candidates", "computed_pixels", "is_auto", "large_call", "overhead",
    "parse_bytes", "pick", "run_bytes",
]

ONE_STREAM_PIXELS = 1 << 20
"""Padded pixels per call from which one call at a time on all the model's threads does as well as several calls on
a share each, with one call's activations in memory instead of several: measured for 1056 x 1056 tiles, while
batches of 8 x 288 x 288 still gain from two streams (``docs/benchmarks.md``)."""


def large_call(pixels: int) -> bool:
    """Whether a call of ``pixels`` padded pixels (over its batch) runs one at a time (:data:`ONE_STREAM_PIXELS`)."""
    return pixels >= ONE_STREAM_PIXELS


DEFAULT_MULTIPLE = 32
"""The padded tile is a multiple of this unless the model needs more: a U-Net that halves its input five times needs
32, and every smaller power of two divides it."""

NICE_TILES = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
"""Core tile edges tried, before rounding the padded tile up to the model's multiple."""

BATCH_PIXELS = 8 * 288 * 288
"""Padded pixels per call that an automatic batch aims at: the default batch of eight 256 + 2 x 16 tiles. Larger
tiles need no batching to keep the model busy, and every tile of a batch multiplies its activations."""

TILE_COST_PIXELS = 128 * 128
"""What a tile costs beyond its pixels, counted as pixels: a model call, a window read, packing and placing its
output. It breaks near-ties (an overlap of a few pixels) towards larger tiles."""

PROBE_TILES = 1
"""Tiles of the chosen size computed once more, by the probe that checks the model takes them."""

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(value: int | float | str, name: str = "memory_budget") -> int:
    """``2GiB``, ``2G``, ``1500M``, ``2e9`` or a plain number of bytes, as bytes (binary units: ``G`` is GiB)."""
    if isinstance(value, bool):
        raise SpecError(f"{name} must be a size such as 2GiB or 1500MiB, got {value!r}")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(value))
        if m is None:
            raise SpecError(f"{name} must be a size such as 2GiB, 1500MiB or 2e9 (bytes), got {value!r}")
        number, unit = float(m.group(1)), m.group(2).lower()
    size = number * _UNITS[unit]
    if not math.isfinite(size) or size < 2**20:
        raise SpecError(f"{name} must be at least 1MiB, e.g. 2GiB; got {value!r}")
    return int(size)


def overhead(tile: XY, overlap: XY) -> float:
    """Pixels computed per pixel kept: ``(tile + 2 * overlap)`` over ``tile``, both axes."""
    return (tile.x + 2 * overlap.x) * (tile.y + 2 * overlap.y) / (tile.x * tile.y)


def _round_up(padded: int, multiple: int) -> int:
    return -(-padded // multiple) * multiple


def candidates(overlap: XY, multiple: int = DEFAULT_MULTIPLE, region: XY | None = None,
               fixed: tuple[int | None, int | None] = (None, None)) -> list[XY]:
    """Core tiles to try, largest first: each of :data:`NICE_TILES` grown so that the padded tile (core plus the
    overlap on both edges) is a multiple of ``multiple``, at most one tile beyond ``region`` (the pixels to
    predict, ``(x, y)``), and with the halo smaller than the core. ``fixed``: a padded ``(x, y)`` edge the model
    fixes (None: free)."""
    if multiple < 1:
        raise SpecError(f"tile_multiple must be >= 1, got {multiple}")
    out: list[XY] = []
    for nice in NICE_TILES:
        edges = []
        for axis, (o, f) in enumerate(zip(overlap, fixed, strict=True)):
            if f is not None:
                edges.append(f - 2 * o)
                continue
            edge = _round_up(nice + 2 * o, multiple) - 2 * o
            if region is not None and edge > _round_up(region[axis] + 2 * o, multiple) - 2 * o:
                edge = 0  # a tile larger than the region only computes padding
            edges.append(edge)
        tile = XY(*edges)
        if min(tile) > 0 and tile.x >= 2 * overlap.x and tile.y >= 2 * overlap.y and tile not in out:
            out.append(tile)
    if region is not None and not out:  # a region smaller than every nice tile: one tile covers it
        return candidates(overlap, multiple, None, fixed)[-1:]
    return sorted(out, key=lambda t: t.x * t.y, reverse=True)


def auto_batch(tile: XY, overlap: XY, batch_size: int | None) -> int:
    """Tiles per call: ``batch_size`` when the user gave one, else as many as :data:`BATCH_PIXELS` holds (at least
    one)."""
    if batch_size is not None:
        return batch_size
    padded = (tile.x + 2 * overlap.x) * (tile.y + 2 * overlap.y)
    return max(1, min(8, BATCH_PIXELS // padded))


def computed_pixels(tile: XY, overlap: XY, region: XY, streams: int = 1) -> int:
    """Padded pixels a run over ``region`` computes with ``tile``, as wall time counts them: the model's
    ``streams`` calls run side by side, each on its share of the threads, so the tiles are rounded up to a whole
    number of rounds (the last tile alone leaves the other streams idle), plus :data:`PROBE_TILES`, and each tile
    :data:`TILE_COST_PIXELS` more."""
    tiles = math.ceil(region.x / tile.x) * math.ceil(region.y / tile.y)
    rounds = math.ceil(tiles / max(1, streams)) * max(1, streams)
    return (rounds + PROBE_TILES) * ((tile.x + 2 * overlap.x) * (tile.y + 2 * overlap.y) + TILE_COST_PIXELS)


@dataclass(frozen=True)
class Footprint:
    """Bytes a run holds, per pixel, by what holds them."""

    model: float
    """Peak bytes a model call adds per padded input pixel of its batch (measured by a probe)."""
    tile: int
    """Bytes per padded pixel of a read, padded and packed tile (all bands)."""
    output: int
    """Bytes per output pixel of the assembler's rows (all bands, with accumulators)."""
    streams: int = 1
    """Model calls running at once."""


def run_bytes(tile: XY, overlap: XY, batch: int, width: int, fp: Footprint) -> int:
    """Memory a streaming run with ``tile`` holds beyond the model's weights: the calls running at once, the tiles
    read ahead and queued (the runner keeps about four batches per stream in flight) and two rows of output tiles
    over a region ``width`` pixels wide."""
    padded = (tile.x + 2 * overlap.x) * (tile.y + 2 * overlap.y)
    calls = fp.streams * batch * padded * fp.model
    queued = (4 * fp.streams * batch + 4) * padded * fp.tile
    rows = 2 * (tile.y + 2 * overlap.y) * width * fp.output
    return int(calls + queued + rows)


@dataclass(frozen=True)
class TileChoice:
    """What ``auto`` chose, and why: recorded in the output's metadata (``TILECAST_TILE``) and shown by ``-v``."""

    tile: XY
    overlap: XY
    batch: int
    reason: str
    """``fixed`` (the model's own size), ``pixels`` (a per-pixel model's block), ``fits`` (the tile that computes the
    fewest pixels) or ``budget`` (one that would compute fewer did not fit the memory budget or the model)."""
    budget: int | None = None
    estimate: int | None = None
    """Bytes :func:`run_bytes` expects the run to hold."""
    multiple: int = 1

    @property
    def padded(self) -> XY:
        return XY(self.tile.x + 2 * self.overlap.x, self.tile.y + 2 * self.overlap.y)

    def describe(self) -> str:
        text = (f"tile {self.tile.x}x{self.tile.y} (auto, {self.reason}): padded {self.padded.x}x{self.padded.y}, "
                f"batch {self.batch}, overlap overhead {overhead(self.tile, self.overlap):.2f}x")
        if self.estimate is not None and self.budget is not None:
            text += f", ~{self.estimate / 2**20:.0f} of {self.budget / 2**20:.0f} MiB budget"
        return text

    @property
    def one_stream(self) -> bool:
        """Whether a call is large enough to run one at a time (:data:`ONE_STREAM_PIXELS`)."""
        return large_call(self.padded.x * self.padded.y * self.batch)

    def tag(self) -> str:
        """The ``TILECAST_TILE`` metadata value."""
        return (f"{self.tile.x},{self.tile.y} auto={self.reason} padded={self.padded.x},{self.padded.y} "
                f"batch={self.batch} multiple={self.multiple}")


@dataclass(frozen=True)
class AutoTile:
    """A request for an automatic tile: the budget (None: a share of the memory available), the padded tile's
    multiple (None: detect it), and the batch size the user gave (None: chosen with the tile)."""

    budget: int | None = None
    multiple: int | None = None
    batch_size: int | None = None


def pick(cands: list[XY], overlap: XY, region: XY, fits: dict[XY, bool], streams: int = 1) -> XY | None:
    """The candidate that computes the fewest pixels over ``region`` (:func:`computed_pixels`) among those that
    ``fits`` (ties: the larger), or None when none fits."""
    ok = [t for t in cands if fits.get(t, False)]
    if not ok:
        return None
    return min(ok, key=lambda t: (computed_pixels(t, overlap, region, streams), -t.x * t.y))
