"""The local runner: streams a plan through bounded queues on one machine.

Reads run in a thread pool (GDAL releases the GIL), inference runs on the calling thread in batches, and a writer
thread casts and writes finished blocks. Every queue is bounded, so memory does not grow with the raster.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..job import Job, TileData
from ..progress import ProgressCallback
from ..sinks.base import Sink

__all__ = ["run_local", "run_local_chunked"]

_DONE = object()


class _Writer(threading.Thread):
    """Casts and writes finished blocks in order; remembers the first error for the main thread."""

    def __init__(self, job: Job, sink: Sink, depth: int = 4) -> None:
        super().__init__(name="tilecast-writer", daemon=True)
        self.job, self.sink = job, sink
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            block = self.queue.get()
            if block is _DONE:
                return
            if self.error is not None:
                continue
            try:
                self.sink.write(block.window, self.job.finish(block))
            except BaseException as exc:  # re-raised on the main thread
                self.error = exc

    def put(self, block: Any) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(block)


def run_local(
    job: Job,
    sink: Sink,
    progress: ProgressCallback | None = None,
    read_threads: int | None = None,
) -> Any:
    """Execute ``job`` into an opened ``sink``; returns ``sink.close()``. On any error the sink is aborted."""
    plan = job.plan
    total = len(plan)
    cols = plan.tile_cols
    batch_size = job.inputs.batch_size
    # Each read thread holds its own GDAL handle and block cache, so input blocks shared by neighbouring tiles are
    # decoded once per thread: one reader per two cores leaves the rest to the model.
    threads = read_threads or max(1, min(4, (os.cpu_count() or 2) // 2))
    in_flight = max(2 * batch_size, threads * 2)
    tile_pixels = plan.geometry.tile.x * plan.geometry.tile.y
    assembler = job.assembler(getattr(sink, "block_rows", 1))
    writer = _Writer(job, sink)
    writer.start()
    done = 0
    next_row = 0
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="tilecast-read") as pool:
            tiles = plan.tiles()
            futures: deque[Future[TileData]] = deque()

            def refill() -> None:
                while len(futures) < in_flight:
                    tile = next(tiles, None)
                    if tile is None:
                        return
                    futures.append(pool.submit(job.read, tile))

            refill()
            pending: list[TileData] = []
            while futures or pending:
                while futures and sum(not p.skip for p in pending) < batch_size:
                    pending.append(futures.popleft().result())
                    refill()
                work = [p for p in pending if not p.skip]
                results = iter(job.infer(work) if work else [])
                for item in pending:
                    job.add(assembler, item, None if item.skip else next(results))
                    done += 1
                    if done == (next_row + 1) * cols:  # a tile row is complete: hand over what is final
                        for block in assembler.finish_row(next_row):
                            writer.put(block)
                        next_row += 1
                pending = []
                if progress is not None:
                    progress(done, total, done * tile_pixels)
        writer.put(_DONE)
        writer.join()
        if writer.error is not None:
            raise writer.error
        return sink.close()
    except BaseException:
        if writer.is_alive():
            writer.error = writer.error or RuntimeError("aborted")
            while writer.is_alive():  # the writer drains without writing once error is set
                try:
                    writer.queue.put(_DONE, timeout=0.1)
                    break
                except queue.Full:
                    continue
            writer.join()
        sink.abort()
        raise


def run_local_chunked(
    job: Job,
    sink: Any,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    chunk_size: int | tuple[int, int] | None = None,
    read_threads: int | None = None,
) -> Any:
    """Execute ``job`` chunk by chunk into a :class:`~tilecast.sinks.chunked.ChunkSink`; resumable.

    Finished chunks are recorded next to the output; with ``resume`` a rerun skips them. Interrupted or failed
    runs started with ``resume`` keep their partial output (errors from tilecast itself, which would recur, do not).
    """
    from ..errors import TilecastError
    from .chunks import ChunkLayout, chunk_shape, compute_chunk, fingerprint

    layout = ChunkLayout.create(job.plan, job.blending, chunk_size)
    done = sink.prepare(job.profile, fingerprint(job, layout), chunk_shape(layout), resume)
    total = len(job.plan)
    tile_pixels = job.plan.geometry.tile.x * job.plan.geometry.tile.y
    tiles_done = sum(layout.own_tiles(i) for i in done)
    # One read-ahead thread: a GDAL handle per reading thread means blocks shared by neighbouring tiles are decoded
    # once per thread, which costs more than parallel decoding gains (bench/bench_dask.py measures it).
    threads = read_threads or 1
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="tilecast-read") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="tilecast-writer") as writer:
            last: Future[None] | None = None
            last_index = -1
            for index in range(len(layout)):
                if index in done:
                    continue
                window, data, stats = compute_chunk(job, layout, index, pool)
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
        return sink.close()
    except BaseException as exc:
        sink.abort(keep=resume and not isinstance(exc, TilecastError))
        raise
