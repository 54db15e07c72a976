"""How tilecast spends the machine: one policy for threads, model streams, GDAL's block cache, buffer reuse and the
Dask workers' malloc, derived from the CPUs this process may use and handed to the runners.

Domain objects (:class:`~tilecast.job.Job`, sources, sinks) say what happens to pixels; this module alone says how
many threads do it and how much memory they may hold. Every number here is a default: build a :class:`Resources`
with :meth:`Resources.detect` (optionally overriding any field) and pass it to a runner. The measurements behind
each choice are in ``docs/benchmarks.md`` ("Why the resource policy is what it is").
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from ._gdal import gdal_cache, smaller_gdal_cache
from .errors import SpecError

if TYPE_CHECKING:
    from .job import Job

__all__ = [
    "CPUS_ENV",
    "GDAL_CACHE_BYTES",
    "ONE_PASS_CACHE_BYTES",
    "Resources",
    "available_cpus",
    "block_store_bytes",
    "bounded_gdal_cache",
    "gdal_cache_bytes",
    "memory_available",
    "one_pass_gdal_cache",
]

MiB = 2**20

CPUS_ENV = "TILECAST_CPUS"
"""Environment variable that sets the CPUs the policy plans for (``--cpus`` on the command line), overriding the
affinity mask: to leave cores to other work, or to size a run for a container whose CPU quota the mask does not
show."""

GDAL_CACHE_BYTES = 256 * MiB
"""GDAL's block cache during a local run when its need cannot be worked out (warped, mosaic or in-memory inputs)."""

ONE_PASS_CACHE_BYTES = 64 * MiB
"""GDAL's block cache for steps that read each block once (deriving overviews, the COG conversion)."""


def memory_available() -> int:
    """Bytes this process can still use: the machine's ``MemAvailable``, or less when a cgroup (a container) limits
    the process's memory (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``, less what it uses)."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit, usage in (("memory.max", "memory.current"),
                         ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            cap = Path("/sys/fs/cgroup", limit).read_text().strip()
            used = int(Path("/sys/fs/cgroup", usage).read_text().strip())
        except (OSError, ValueError):
            continue
        if cap.isdigit() and int(cap) < 2**60:
            avail = min(avail, max(0, int(cap) - used))
        break
    return avail


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask, which containers and ``taskset`` narrow."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Resources:
    """The resource policy of a run. :meth:`detect` derives it from the CPUs; every field can be overridden."""

    cpus: int
    """CPUs this process may run on (its affinity mask)."""
    model_threads: int
    """Intra-op threads for an in-process model, in all: every CPU, less two on machines with more than four.
    Always explicit, so ONNX Runtime neither sizes its pool from the whole machine nor pins its threads (a pinned
    thread preempted by tilecast's readers or writer stalls every other one at the next barrier)."""
    model_streams: int
    """Model calls kept running at once for an in-process model with ``model_threads`` threads (see
    :meth:`streams_for`)."""
    read_threads: int
    """Threads that read input tiles for the streaming local runner: one per two CPUs, at most four. Each holds its
    own GDAL handle and block cache, so blocks shared by neighbouring tiles are decoded once per thread; more
    readers decode more than they gain, and the other CPUs are the model's."""
    shared_read_threads: int = 0
    """Reading threads when the source decodes each input block once for all of them
    (:class:`~tilecast.sources.base.SharedBlocks`): one per CPU, at most eight (0: derived). Nothing is decoded
    twice then, so a reader costs only the CPU time it uses, and decoding is no longer one thread's work."""
    writer_threads: int = 0
    """Threads for the per-pixel steps after the model (dividing blended sums, casting, the first overview level),
    each on column spans of an output strip, and for GDAL's smaller overview levels: one per CPU (0: derived)."""
    chunk_read_threads: int = 1
    """Read-ahead threads of the chunked local runner: one, for the same reason as above, since a chunk's tiles
    share more blocks than a row's."""
    cog_threads: int = 0
    """GDAL threads that compress the COG: one more than the CPUs, because the calling thread reads and writes
    between the compressing threads' turns (0: derived)."""
    reuse_batches: bool = True
    """Stack the next batch into the arrays of a batch the model is done with (only for runtimes that declare
    ``releases_inputs``): a fresh batch costs the kernel a page fault and a zeroed page for every 4 KiB."""
    spare_batches: int = 2
    """How many such batches to keep for reuse."""
    single_ends: bool = True
    """With several model streams, send the first and the last ``batch_size`` tiles of a run (or of a chunk) one
    at a time: every stream starts as soon as a tile is read, and the streams finish together instead of one idling
    for up to a whole batch. Never for a model with a fixed batch size, whose short batches are padded."""
    run_cache_floor: int = 64 * MiB
    """The smallest GDAL block cache of a local run (see :func:`gdal_cache_bytes`)."""
    run_cache_fallback: int = GDAL_CACHE_BYTES
    """A local run's GDAL block cache when its need cannot be worked out."""
    one_pass_cache: int = ONE_PASS_CACHE_BYTES
    """GDAL's block cache for steps that read every block once (overviews, the COG conversion)."""
    worker_cache: int = 64 * MiB
    """GDAL's block cache on a Dask worker (unless the client's settings say otherwise): a worker's memory is one
    chunk at a time, and GDAL's default (5% of RAM) would dominate it."""
    export_cache: int = 128 * MiB
    """GDAL's block cache while exporting: grouped reads visit each block about once."""
    worker_mmap_threshold: int = 32 * MiB
    """glibc's mmap threshold on a Dask worker started with ``MALLOC_TRIM_THRESHOLD_`` (glibc's own dynamic
    ceiling), so that large buffers are reused instead of mapped afresh on every use."""
    worker_trim_threshold: int = 64 * MiB
    """glibc's trim threshold there: memory still goes back to the system after a peak."""
    assembly_bytes: int = 128 * MiB
    """What the streaming runner's assembly buffers and output strips may hold. Outputs too wide for it are
    assembled and written in column bands, each band's tiles top to bottom, so memory is flat in width and height
    (:func:`~tilecast.assemble.column_bands`); narrower ones in full-width strips as before."""
    band_unit: int = 512
    """Column bands are whole multiples of this many columns: the COG's blocks (and an even number, which the
    streamed overview level needs)."""

    def __post_init__(self) -> None:
        if self.cog_threads == 0:
            object.__setattr__(self, "cog_threads", self.cpus + 1)
        if self.shared_read_threads == 0:
            object.__setattr__(self, "shared_read_threads", min(8, self.cpus))
        if self.writer_threads == 0:
            object.__setattr__(self, "writer_threads", self.cpus)
        for f in fields(self):
            value = getattr(self, f.name)
            least = 0 if "cache" in f.name or "spare" in f.name else 1
            if isinstance(value, int) and not isinstance(value, bool) and value < least:
                raise SpecError(f"Resources.{f.name} must be at least {least}, got {value}; pass a larger value")

    @classmethod
    def detect(cls, cpus: int | None = None, **overrides: Any) -> Resources:
        """The policy for ``cpus`` CPUs (by default those this process may use), with ``overrides`` applied.

        Fields derived from others follow the overrides: ``model_threads=4`` also sets the streams for four threads.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise SpecError(f"unknown resource settings {unknown}; use some of {sorted(names)}")
        n = cpus or _env_cpus() or available_cpus()
        threads = overrides.get("model_threads") or (n - 2 if n > 4 else n)
        derived: dict[str, Any] = {
            "cpus": n, "model_threads": threads, "model_streams": _streams(threads, n),
            "read_threads": max(1, min(4, n // 2)),
        }
        derived.update(overrides)
        return cls(**derived)

    def streams_for(self, threads: int) -> int:
        """How many calls to keep running at once on an in-process model with ``threads`` CPU threads: two when
        those threads take every CPU (machines with up to four), else one.

        Inside one call every operator ends at a barrier that waits for all of the model's threads. When the model
        has every core, tilecast's reader and writer threads can only run by preempting one of them, and the others
        idle at the next barrier; two calls with half the threads each do not wait for each other. With CPUs to
        spare nothing preempts the model, and one call keeps one batch's activations in memory instead of two.
        """
        return _streams(threads, self.cpus)

    def spread_ends(self, streams: int, fixed_batch: bool) -> bool:
        """Whether a run with ``streams`` model streams sends its first and last batches a tile at a time."""
        return self.single_ends and streams > 1 and not fixed_batch

    def run_gdal_cache(self, job: Job) -> rasterio.Env:
        """GDAL's block cache for a local run of ``job`` (see :func:`gdal_cache_bytes`), unless the user set it."""
        return gdal_cache(gdal_cache_bytes(job, self))

    def one_pass_gdal_cache(self) -> rasterio.Env:
        """GDAL's block cache lowered to :attr:`one_pass_cache` for a step that reads every block once."""
        return smaller_gdal_cache(self.one_pass_cache)

    def export_gdal_cache(self) -> rasterio.Env:
        """GDAL's block cache for exports, unless the user set it."""
        return gdal_cache(self.export_cache)


def _env_cpus() -> int | None:
    value = os.environ.get(CPUS_ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise SpecError(f"{CPUS_ENV}={value!r} is not a number of CPUs; set it to a positive integer (or unset it to "
                        "use every CPU this process may run on)")
    return int(value)


def _streams(threads: int, cpus: int) -> int:
    return 2 if threads >= 2 and threads >= cpus else 1


def gdal_cache_bytes(job: Job, resources: Resources | None = None) -> int:
    """Room for the input blocks one row of tiles touches, for each reading thread (each has its own handle), plus
    two output strips, and half as much again; at least ``run_cache_floor``.

    Less than the blocks of a row of tiles and blocks are decoded twice; more only fills memory with blocks that
    are never read again, and every new block faults fresh pages in.
    """
    from .sources.rasterio_source import RasterioSource

    res = resources or Resources.detect()
    source = job.source
    if not isinstance(source, RasterioSource) or source.warped:
        return res.run_cache_fallback
    out_w = _widest_band(job, res)
    need = 0
    if block_store_bytes(job, res) == 0:  # else each block is decoded once, into the store, and GDAL keeps none
        rows, in_w = _input_span(job, source.block_shape, out_w)
        need = res.read_threads * rows * in_w * source.pixel_bytes
    profile = job.profile
    out_h = job.plan.output_shape[0]
    need += 2 * min(out_h, 256) * out_w * len(profile.band_names) * np.dtype(profile.dtype).itemsize
    return max(res.run_cache_floor, int(1.5 * need))


def block_store_bytes(job: Job, resources: Resources | None = None) -> int:
    """The decoded input blocks a run keeps when its source shares them among reading threads
    (:class:`~tilecast.sources.base.SharedBlocks`): the block rows one row of tiles spans and one more (the next row
    of tiles starts in it while this one ends), over the columns a row of tiles reads, and a quarter more; 0 when
    the source cannot share blocks, or when one thread reads (on one CPU, where GDAL's own cache of one handle
    decodes each block once too)."""
    from .sources.base import shared_block_shape

    res = resources or Resources.detect()
    block = shared_block_shape(job.source)
    if block is None or res.shared_read_threads < 2:  # one thread decodes alone: the store would only add a copy
        return 0
    rows, in_w = _input_span(job, block, _widest_band(job, res))
    per_pixel = job.source.shared_pixel_bytes()  # type: ignore[attr-defined]  # a SharedBlocks, as it has a shape
    return int(1.25 * rows * in_w * per_pixel)


def _input_span(job: Job, block: tuple[int, int], out_w: int) -> tuple[int, int]:
    """``(rows, columns)`` of input blocks that a row of tiles reads, with one more block row (the next row of tiles
    starts in it), when the output is assembled ``out_w`` columns at a time."""
    g = job.plan.geometry
    block_h, block_w = block
    rows = (math.ceil((g.tile.y + 2 * g.overlap.y) / block_h) + 1) * block_h
    in_w = job.source.grid.shape[1]
    if out_w < job.plan.output_shape[1]:  # assembled in column bands: a row of tiles spans one band (and its halo)
        in_w = min(in_w, math.ceil(out_w * g.tile.x / g.out.x) + 2 * (g.tile.x + g.overlap.x) + block_w)
    return rows, in_w


def _widest_band(job: Job, res: Resources) -> int:
    """The widest column band a GeoTIFF run assembles (see :func:`~tilecast.assemble.column_bands`)."""
    from .assemble import column_bands

    n = len(job.profile.band_names) + (len(job.outputs.band_names) if job.blending else 0)
    return max(c1 - c0 for c0, c1 in column_bands(job.plan, job.blending, n, 256, res.assembly_bytes,
                                                   res.band_unit))


def bounded_gdal_cache(job: Job, resources: Resources | None = None) -> rasterio.Env:
    """GDAL's block cache defaults to 5% of RAM and fills up during a run: cap it to what ``job`` needs (see
    :func:`gdal_cache_bytes`), unless the user set it."""
    return (resources or Resources.detect()).run_gdal_cache(job)


def one_pass_gdal_cache() -> rasterio.Env:
    """The default policy's block cache for a step that reads every block once (see :attr:`Resources.one_pass_cache`);
    for sinks, which run where no policy is handed to them (a Dask worker builds the COG too)."""
    return Resources.detect().one_pass_gdal_cache()
