"""``input_tile_size="auto"`` against a real model: measure what a call costs, try sizes with real calls, shrink.

The choice itself is :mod:`tilecast.autotile`'s (pure arithmetic). Here the model answers: a batch of zero tiles at
a small size says how much memory a call adds per pixel (the resident set sampled while it runs) and whether the
model takes sizes that are multiples of the assumed stride (a rejected size doubles the multiple); the chosen size
is then probed for real, and an allocation failure or a rejection moves to the next smaller candidate.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .autotile import (
    DEFAULT_MULTIPLE,
    AutoTile,
    Footprint,
    TileChoice,
    auto_batch,
    candidates,
    computed_pixels,
    large_call,
    pick,
    run_bytes,
)
from .errors import TileSizeError
from .plan import XY, TileGeometry, spatial_shape
from .resources import memory_available
from .runtimes.base import one_stream_of, run_released, streams_of
from .runtimes.devices import placed_of
from .tensors import bind_inputs

if TYPE_CHECKING:
    from .runtimes.base import Runtime
    from .spec import ModelSpec

__all__ = ["BUDGET_FRACTION", "choose_tile", "default_budget", "is_allocation_failure", "memory_available",
           "peak_call_bytes"]

BUDGET_FRACTION = 0.5
"""The share of the memory available that ``auto`` may plan for when no ``memory_budget`` is given: the rest is the
page cache's, GDAL's and the model's weights'."""

MAX_MULTIPLE = 256
"""The largest stride ``auto`` assumes before it gives up on a model that rejects every size."""

SAFETY = 1.25
"""Margin on a call's measured memory: allocators round up, and the resident set is sampled, not traced."""

MAX_DEVICE_BATCH = 64
"""The most tiles per call :func:`choose_tile` plans for an accelerator (more only adds latency)."""

_OOM_TEXT = ("out of memory", "failed to allocate", "bad_alloc", "resource_exhausted", "cannot allocate memory",
             "memoryerror")


def default_budget() -> int:
    """:data:`BUDGET_FRACTION` of :func:`memory_available`."""
    return int(BUDGET_FRACTION * memory_available())


def is_allocation_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) says memory ran out: ``MemoryError``, torch's ``OutOfMemoryError``,
    ONNX Runtime's and TensorFlow's allocation failures."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError) or any("OutOfMemory" in c.__name__ for c in type(exc).__mro__):
            return True
        text = str(exc).lower()
        if any(t in text for t in _OOM_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_call_bytes(runtime: Runtime, batch: Mapping[str, np.ndarray]) -> int:
    """Run ``batch`` once; the most the resident set grew while it ran (sampled every millisecond, and after it)."""
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample, name="tilecast-autotile", daemon=True)
    sampler.start()
    try:
        run_released(runtime, batch)  # a probe: its size may not be the one the run uses
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak[0], _rss()) - start)


class _Prober:
    """Zero batches at candidate sizes for one model and one image's bands."""

    def __init__(self, runtime: Runtime, spec: ModelSpec, band_names: Sequence[str], dtype: np.dtype,
                 properties: Mapping[str, Any]) -> None:
        self.runtime, self.spec = runtime, spec
        self.band_names, self.dtype, self.properties = list(band_names), np.dtype(dtype), properties
        self.measured: dict[tuple[XY, int], int] = {}
        self.one: Runtime | None = None
        """The one-stream runtime that probed a large call (:func:`~tilecast.runtimes.base.one_stream_of`)."""

    def runtime_for(self, pixels: int) -> Runtime:
        """The runtime a run makes calls of ``pixels`` padded pixels with: one stream for large calls (all the
        threads on one call), created once, for the probes and then the run."""
        if not large_call(pixels):
            return self.runtime
        if self.one is None:
            self.one = one_stream_of(self.runtime)
        return self.one

    def release(self, keep: Runtime | None) -> None:
        """Close the one-stream session the probes opened unless it is ``keep`` (the run's): a refused search or a
        smaller choice would otherwise leave it (and on a GPU its memory) to the garbage collector."""
        if self.one is not None and self.one is not self.runtime and self.one is not keep:
            self.one.close()
            self.one = None

    def spec_for(self, tile: XY, batch: int) -> ModelSpec:
        g = self.spec.geometry
        return self.spec.replace(geometry=TileGeometry(tile, g.overlap, None), batch_size=batch)

    def zeros(self, runtime: Runtime, tile: XY, batch: int) -> Mapping[str, np.ndarray]:
        """A packed batch of ``batch`` zero tiles at ``tile`` for ``runtime``."""
        spec = self.spec_for(tile, batch)
        inputs = bind_inputs(spec, runtime.signature, self.band_names, self.dtype, self.properties)
        padded = spec.geometry.padded
        return inputs.pack([np.zeros((len(self.band_names), padded.y, padded.x), self.dtype)] * batch)

    def device_batch(self, tile: XY, batch: int, host_cap: int) -> int:
        """``batch``, or more on an accelerator: as many tiles as its free memory takes in one call (the runtime's
        :meth:`~tilecast.runtimes.devices.Placed.batch_limit`, a one-tile probe), at most :data:`MAX_DEVICE_BATCH`
        and ``host_cap`` (what the host's memory budget leaves for the batches). On the CPU (no limit known)
        ``batch`` itself."""
        placed = placed_of(self.runtime)
        if placed is None:
            return batch
        try:
            limit = placed.batch_limit(self.zeros(self.runtime, tile, 1))
        except Exception:  # no plan: the runtime still splits a batch that does not fit
            return batch
        return max(batch, min(limit, MAX_DEVICE_BATCH, host_cap)) if limit else batch

    def run(self, tile: XY, batch: int) -> int | BaseException:
        """Bytes a call at ``tile`` adds, or the error that refused it."""
        if (tile, batch) in self.measured:
            return self.measured[(tile, batch)]
        padded = self.spec_for(tile, batch).geometry.padded
        # A call the run would make one at a time is probed that way: on all the threads (on two cores, twice as
        # fast as on one stream's share), in the session the run then uses.
        runtime = self.runtime_for(padded.x * padded.y * batch)
        try:
            got = peak_call_bytes(runtime, self.zeros(runtime, tile, batch))
        except Exception as exc:  # a refusal is an answer: the next size is tried
            return exc
        self.measured[(tile, batch)] = got
        return got


def fixed_edges(spec: ModelSpec, runtime: Runtime, band_names: Sequence[str], dtype: np.dtype,
                properties: Mapping[str, Any]) -> tuple[str, tuple[int | None, int | None]]:
    """The input layout, and the padded ``(x, y)`` edges the model's signature fixes (None: free)."""
    inputs = bind_inputs(spec, runtime.signature, band_names, dtype, properties)
    layout = inputs.layout
    for t in runtime.signature.inputs:
        if layout in ("NCHW", "NHWC") and t.shape is not None and len(t.shape) == 4:
            h, w = spatial_shape(t.shape, layout)
            return layout, (w, h)
    return layout, (None, None)


def choose_tile(runtime: Runtime, spec: ModelSpec, auto: AutoTile, band_names: Sequence[str], dtype: np.dtype,
                properties: Mapping[str, Any], region: XY) -> tuple[TileChoice, Runtime]:
    """The tile for predicting ``region`` (``(x, y)`` pixels) of an image with ``band_names`` of ``dtype``: the
    candidate of :func:`tilecast.autotile.candidates` that computes the fewest pixels among those whose run fits
    the budget and that the model accepts; and the runtime to run it on (``runtime``, or for calls of
    :data:`~tilecast.autotile.ONE_STREAM_PIXELS` or more its one-stream session, which the probes used)."""
    overlap = spec.geometry.overlap
    layout, fixed = fixed_edges(spec, runtime, band_names, dtype, properties)
    if layout == "pixels" or None not in fixed:
        tile = spec.geometry.tile if layout == "pixels" else TileGeometry.core_for(XY(*fixed), overlap)  # type: ignore[arg-type]
        batch = auto.batch_size or spec.batch_size
        choice = TileChoice(tile, overlap, batch, "pixels" if layout == "pixels" else "fixed")
        return choice, one_stream_of(runtime) if choice.one_stream else runtime
    prober = _Prober(runtime, spec, band_names, dtype, properties)
    try:
        choice = _search(prober, auto, region, fixed)
        chosen = prober.runtime_for(choice.padded.x * choice.padded.y * choice.batch)
    except BaseException:
        prober.release(None)
        raise
    prober.release(chosen)
    return choice, chosen


def _search(prober: _Prober, auto: AutoTile, region: XY, fixed: tuple[int | None, int | None]) -> TileChoice:
    """:func:`choose_tile`'s search: the stride first (a refused small size doubles it), then the largest tile."""
    spec, runtime, band_names, dtype = prober.spec, prober.runtime, prober.band_names, prober.dtype
    overlap = spec.geometry.overlap
    budget = auto.budget or default_budget()
    fp_tile = len(band_names) * (np.dtype(dtype).itemsize + 4)
    fp_out = 8 * max(1, len(spec.output_bands)) + 1
    multiple = auto.multiple or DEFAULT_MULTIPLE
    last: BaseException | None = None
    while multiple <= MAX_MULTIPLE:
        cands = candidates(overlap, multiple, region, fixed)
        small = min(cands, key=lambda t: (abs(t.x - 256) + abs(t.y - 256), t.x))
        got = prober.run(small, 1)
        if isinstance(got, BaseException) and not is_allocation_failure(got) and auto.multiple is None:
            last, multiple = got, multiple * 2  # the model wants a coarser stride
            continue
        if isinstance(got, BaseException):
            raise _refused(small, overlap, got) from got
        padded = (small.x + 2 * overlap.x) * (small.y + 2 * overlap.y)
        fp = Footprint(max(SAFETY * got / padded, float(fp_tile)), fp_tile, fp_out, streams_of(runtime))
        choice = _largest(prober, cands, overlap, region, budget, fp, auto, multiple)
        if choice is not None:
            return choice
        multiple *= 2  # a larger size was refused that a coarser stride would not have tried
    raise _refused(small, overlap, last) from last


def _largest(prober: _Prober, cands: list[XY], overlap: XY, region: XY, budget: int, fp: Footprint, auto: AutoTile,
             multiple: int) -> TileChoice | None:
    """Probe the best candidate that the estimate fits; on a failure or a measured overrun, the next one. None when
    a refusal may be the stride's (the refused padded size is not a multiple of twice ``multiple``)."""
    def estimate(t: XY, model: float) -> int:
        return run_bytes(t, overlap, auto_batch(t, overlap, auto.batch_size), region.x,
                         Footprint(model, fp.tile, fp.output, fp.streams))

    fits = {t: estimate(t, fp.model) <= budget for t in cands}
    excluded = not all(fits.values())
    last: BaseException | None = None
    while (tile := pick(cands, overlap, region, fits, fp.streams)) is not None:
        batch = auto_batch(tile, overlap, auto.batch_size)
        got = prober.run(tile, 1)  # one tile: a batch's activations are as many times one tile's
        if isinstance(got, BaseException):
            last = got
            pad = (tile.x + 2 * overlap.x, tile.y + 2 * overlap.y)
            if not is_allocation_failure(got) and auto.multiple is None and multiple < MAX_MULTIPLE \
                    and any(p % (2 * multiple) for p in pad):
                return None
            if is_allocation_failure(got):  # nothing larger fits either
                fits.update({t: False for t in cands if t.x * t.y >= tile.x * tile.y})
            fits[tile], excluded = False, True
            continue
        padded = (tile.x + 2 * overlap.x) * (tile.y + 2 * overlap.y)
        used = estimate(tile, max(SAFETY * got / padded, float(fp.tile)))
        if used > budget:
            fits[tile], excluded = False, True
            continue
        cost = computed_pixels(tile, overlap, region, fp.streams)
        held_back = excluded and any(not fits[t] and computed_pixels(t, overlap, region, fp.streams) < cost
                                     for t in cands)  # a tile that would have computed less did not fit
        if auto.batch_size is None:  # the host keeps about four batches (packed, in flight, outputs)
            batch = prober.device_batch(tile, batch, max(1, (budget - used) // (4 * padded * fp.tile) + batch))
        return TileChoice(tile, overlap, batch, "budget" if held_back else "fits", budget, used, multiple)
    smallest = cands[-1]
    if last is not None:
        raise _refused(smallest, overlap, last) from last
    raise TileSizeError(
        f"no tile fits the memory budget of {budget / 2**20:.0f} MiB (the smallest, {smallest.x} x {smallest.y} px, "
        f"needs about {estimate(smallest, fp.model) / 2**20:.0f} MiB); raise --memory-budget (memory_budget=) or "
        "give --tile and --batch-size"
    )


def _refused(tile: XY, overlap: XY, exc: BaseException | None) -> TileSizeError:
    what = "ran out of memory" if exc is not None and is_allocation_failure(exc) else "refused every size tried"
    return TileSizeError(
        f"--tile auto: the model {what} (down to {tile.x} x {tile.y} px with {overlap.x} px overlap; last error: "
        f"{type(exc).__name__}: {str(exc)[:200]}); give --tile (input_tile_size) and --batch-size, or "
        "tile_multiple= when the model needs sizes divisible by a stride"
    )
