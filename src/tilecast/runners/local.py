"""The local runner: streams a plan through bounded queues on one machine.

Four stages, each on its own thread so the model never waits for Python: reads run in a thread pool (GDAL releases
the GIL); a batcher thread collects read tiles in plan order and packs them into the model's tensors; the calling
thread only runs the model (or, for a runtime with several ``streams``, keeps that many calls going on model
threads); a writer thread assembles the outputs in plan order, casts finished rows and writes them. Every queue is
bounded, so memory does not grow with the raster.
"""

from __future__ import annotations

import contextlib
import queue
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any

from ..assemble import column_bands
from ..job import Job, TileData
from ..parallel import Spans
from ..progress import ProgressCallback, note
from ..resources import Resources, block_store_bytes
from ..runtimes.base import streams_of
from ..sinks.base import ChunkSink, Sink, block_rows_of, output_path_of
from ..sinks.safety import refuse_overwriting_inputs
from .ordered import BatchReuse, batches, in_order

__all__ = ["interrupt_on_sigterm", "run_local", "run_local_chunked"]

_DONE = object()


class _Stage(threading.Thread):
    """A daemon thread behind a bounded queue; its first error is re-raised on the calling thread."""

    def __init__(self, name: str, depth: int) -> None:
        super().__init__(name=name, daemon=True)
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.stopped = threading.Event()

    def offer(self, item: Any) -> bool:
        """Put ``item`` unless the stage is being stopped; False if it was."""
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def stop(self) -> None:
        self.stopped.set()
        while self.is_alive():
            try:  # unblock a consumer waiting for an item, or a producer waiting for room
                self.queue.put_nowait(_DONE)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self.queue.get_nowait()
            self.join(timeout=0.05)


class _Batcher(_Stage):
    """Collects read tiles in plan order into batches of ``batch_size`` model tiles and packs them."""

    def __init__(self, job: Job, pool: Executor, in_flight: int, reuse: BatchReuse, resources: Resources,
                 bands: list[tuple[int, int]], announce: bool = False) -> None:
        super().__init__("tilecast-batcher", depth=2)
        self.job, self.pool, self.in_flight = job, pool, in_flight
        self.reuse, self.resources, self.bands, self.announce = reuse, resources, bands, announce

    def run(self) -> None:
        job = self.job
        try:
            tiles = _announced(job, (t for cols in self.bands for t in job.band_tiles(cols)), self.announce)
            read = self._until_stopped(item for _, item in in_order(self.pool, tiles, job.read, self.in_flight))
            for pending in batches(job, read, band_tile_count(job, self.bands), self.resources):
                work = [p for p in pending if not p.skip]
                if not self.offer((pending, self.reuse.pack(work) if work else None, len(work))):
                    return
            self.offer(_DONE)
        except BaseException as exc:  # handed to the calling thread in order
            self.offer(exc)

    def _until_stopped(self, items: Iterator[Any]) -> Iterator[Any]:
        """``items`` until the stage is stopped: a failed run reads no more tiles for a batch nobody will take."""
        for item in items:
            if self.stopped.is_set():
                return
            yield item

    def get(self) -> Any:
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item


class _Writer(_Stage):
    """Adds each batch's outputs to the assembler in plan order, then casts and writes every finished row; the
    per-pixel steps of a finished row run on ``threads`` threads, in column spans."""

    def __init__(self, job: Job, sink: Sink, bands: list[tuple[int, int]], threads: int = 1, depth: int = 4) -> None:
        super().__init__("tilecast-writer", depth)
        self.job, self.sink, self.bands, self.threads = job, sink, bands, threads
        self.align = block_rows_of(sink)

    def run(self) -> None:
        try:
            with Spans(self.threads, "tilecast-writer-span") as spans:
                self._run(spans)
        except BaseException as exc:  # re-raised on the calling thread by its next put
            self.error = exc
            # Keep taking items until the end or a stop: a producer blocked on the full queue would wait forever.
            while not self.stopped.is_set() and self.queue.get() is not _DONE:
                pass

    def _run(self, spans: Spans) -> None:
        job = self.job
        band = added = next_row = 0
        assembler = job.assembler(self.align, self.bands[0])  # may fail too (its buffers): inside run's handler
        cols = len(job.band_tile_cols(self.bands[0]))
        while True:
            item = self.queue.get()
            if item is _DONE or self.stopped.is_set():
                return
            pending, values = item
            results = iter(values)
            for tile in pending:
                job.add(assembler, tile, None if tile.skip else next(results))
                added += 1
                if added == (next_row + 1) * cols:  # a tile row is complete: write what is final
                    for block in assembler.finish_row(next_row, spans):
                        self.sink.write(block.window, job.finish(block, spans))
                    next_row += 1
                    if next_row == job.plan.tile_rows and band + 1 < len(self.bands):  # the next band
                        band, added, next_row = band + 1, 0, 0
                        assembler = job.assembler(self.align, self.bands[band])
                        cols = len(job.band_tile_cols(self.bands[band]))

    def put(self, item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)


def run_local(
    job: Job,
    sink: Sink,
    progress: ProgressCallback | None = None,
    read_threads: int | None = None,
    resources: Resources | None = None,
) -> Any:
    """Execute ``job`` into an opened ``sink``; returns ``sink.close()``. On any error the sink is aborted.

    ``resources``: the policy (reading threads, batch reuse, ends a tile at a time); by default
    :meth:`Resources.detect() <tilecast.resources.Resources.detect>`. ``read_threads`` overrides its readers.
    """
    res = resources or Resources.detect()
    try:
        refuse_inputs(job, sink)
    except BaseException:
        sink.abort()
        raise
    plan = job.plan
    total = len(plan)
    bands = output_bands_of(job, sink, res)
    sent = band_tile_count(job, bands)  # more than the plan's tiles when bands share some
    shared = block_store_bytes(job, res)
    threads = read_threads or (res.shared_read_threads if shared else res.read_threads)
    in_flight = max(2 * job.inputs.batch_size, threads * 2)
    tile_pixels = plan.geometry.tile.x * plan.geometry.tile.y
    streams = streams_of(job.runtime)
    reuse = BatchReuse(job, res)
    writer = _Writer(job, sink, bands, res.writer_threads)
    writer.start()
    stages: list[_Stage] = [writer]
    done = 0

    def run(item: tuple[list[TileData], Any, int]) -> list[Any]:
        _, batch, n = item
        return reuse.run(batch, n) if n else []

    try:
        with _shared_blocks(job, shared, threads), _model_threads(streams) as models, \
                _threads(threads, "tilecast-read") as pool:
            batcher = _Batcher(job, pool, in_flight, reuse, res, bands, announce=bool(shared))
            stages.append(batcher)
            batcher.start()
            try:
                # Counted in tiles, so the single tiles that end the run keep every stream busy (see batches).
                ahead = streams * job.inputs.batch_size
                for (pending, _, _), values in in_order(models, iter(batcher.get, _DONE), run, ahead,
                                                        weight=lambda item: item[2]):
                    writer.put((pending, values))
                    done += len(pending)
                    if progress is not None:
                        shown = done if sent == total else min(total, done * total // sent)
                        progress(shown, total, shown * tile_pixels)
            finally:
                batcher.stop()  # before the pool waits for reads the batcher would never collect
        writer.put(_DONE)
        writer.join()
        if writer.error is not None:
            raise writer.error
        note(progress, sink)
        return sink.close()
    except BaseException:
        for stage in stages:
            stage.stop()
        sink.abort()
        raise


@contextlib.contextmanager
def interrupt_on_sigterm() -> Iterator[None]:
    """Make SIGTERM stop a run as Ctrl-C does (a ``KeyboardInterrupt``: the sink is aborted, nothing is left), for
    as long as the block runs; only on the main thread, and only where SIGTERM still has its default action."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def output_bands_of(job: Job, sink: Sink, resources: Resources) -> list[tuple[int, int]]:
    """The output column bands of a streaming run (see :func:`~tilecast.assemble.column_bands`): one, of every
    column, unless the output is too wide for the policy's ``assembly_bytes``."""
    n = len(job.profile.band_names) + (len(job.outputs.band_names) if job.blending else 0)
    return column_bands(job.plan, job.blending, n, block_rows_of(sink), resources.assembly_bytes,
                        resources.band_unit)


def band_tile_count(job: Job, bands: list[tuple[int, int]]) -> int:
    """Tiles sent for ``bands``: the plan's, and again those that two bands share."""
    return job.plan.tile_rows * sum(len(job.band_tile_cols(cols)) for cols in bands)


def refuse_inputs(job: Job, sink: object) -> None:
    """Whatever ``overwrite`` says, never publish over one of the job's own input files; every runner checks its
    sink (a custom one too), not only ``to_geotiff``/``to_zarr``."""
    path = output_path_of(sink)
    if path is not None:
        refuse_overwriting_inputs(path, job.source)


def _announced(job: Job, tiles: Iterator[Any], announce: bool) -> Iterator[Any]:
    """``tiles``, telling a source that shares its blocks about each one as its read is queued, so that the
    blocks are decoded ahead, in plan order (see :meth:`tilecast.sources.blocks.BlockStore.expect`)."""
    if not announce:
        yield from tiles
        return
    for tile in tiles:
        job.source.expect(tile.read)  # type: ignore[attr-defined]
        yield tile


@contextlib.contextmanager
def _shared_blocks(job: Job, budget: int, threads: int) -> Iterator[None]:
    """Let every reading thread share one store of ``budget`` bytes of decoded input blocks for the run, decoded
    ahead on ``threads`` threads (see :mod:`tilecast.sources.blocks`); nothing when the budget is 0 (the source
    cannot)."""
    if not budget:
        yield
        return
    job.source.share_blocks(budget, threads)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        job.source.share_blocks(0)  # type: ignore[attr-defined]


def _model_threads(streams: int) -> contextlib.AbstractContextManager[Executor | None]:
    """Threads for a runtime that takes ``streams`` calls at once; with one, the calling thread runs the model."""
    if streams == 1:
        return contextlib.nullcontext()
    return _threads(streams, "tilecast-model")


@contextlib.contextmanager
def _threads(n: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """``n`` threads for reads or model calls that end with the block, dropping the calls not started yet: after
    a failure nobody takes their results, and each one (a slow remote read, a model call) would delay the error."""
    pool = ThreadPoolExecutor(n, thread_name_prefix=name)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_local_chunked(
    job: Job,
    sink: ChunkSink,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    chunk_size: int | tuple[int, int] | None = None,
    read_threads: int | None = None,
    resources: Resources | None = None,
) -> Any:
    """Execute ``job`` chunk by chunk into a :class:`~tilecast.sinks.base.ChunkSink`; resumable.

    Finished chunks are recorded next to the output; with ``resume`` a rerun skips them. Interrupted or failed
    runs started with ``resume`` keep their partial output (errors from tilecast itself, which would recur, do not).
    """
    from ..errors import TilecastError
    from .chunks import ChunkLayout, chunk_shape, compute_chunk, fingerprint

    refuse_inputs(job, sink)
    layout = ChunkLayout.create(job.plan, job.blending, chunk_size)
    done = sink.prepare(job.profile, fingerprint(job, layout), chunk_shape(layout), resume)
    total = len(job.plan)
    tile_pixels = job.plan.geometry.tile.x * job.plan.geometry.tile.y
    tiles_done = sum(layout.own_tiles(i) for i in done)
    res = resources or Resources.detect()
    threads = read_threads or res.chunk_read_threads
    reuse = BatchReuse(job, res)
    try:
        with _threads(threads, "tilecast-read") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="tilecast-writer") as writer, \
                _model_threads(streams_of(job.runtime)) as models:
            last: Future[None] | None = None
            last_index = -1
            for index in range(len(layout)):
                if index in done:
                    continue
                window, data, stats = compute_chunk(job, layout, index, pool, models=models, reuse=reuse,
                                                    resources=res)
                if last is not None:
                    last.result()
                    sink.mark([last_index])
                last, last_index = writer.submit(sink.write, window, data), index
                tiles_done += stats.tiles
                if progress is not None:
                    progress(tiles_done, total, tiles_done * tile_pixels)
            if last is not None:
                last.result()
                sink.mark([last_index])
        note(progress, sink)
        return sink.close()
    except BaseException as exc:
        # A tilecast error would recur, except a resumable one (a write that failed on a full disk: free space, resume)
        sink.abort(keep=resume and (not isinstance(exc, TilecastError) or exc.resumable))
        raise
