"""The Dask runner: output chunks of whole tiles as Dask tasks, on a LocalCluster or any distributed cluster.

Each task reads its own tiles' input windows (with halo) straight from the source, runs the model in batches and
writes its chunk straight into the output (GeoTIFF under a file lock, or Zarr), so neither inputs nor outputs pass
through the client. There is no ``map_overlap`` over a Dask array of the input: a task's memory is one chunk.

The model is never pickled per task. The client scatters one small :class:`~tilecast.runners.recipe.JobRecipe`
(model path and options, source path and bands, plan and bindings, GDAL settings) to the workers; each worker
process loads the model the first time and caches it. Retries after a lost worker simply recompute the chunk.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._extras import require
from ..errors import SpecError, TilecastError
from ..job import Job
from ..progress import ProgressCallback, note
from .chunks import ChunkLayout, ChunkStats, chunk_shape, compute_chunk, fingerprint
from .recipe import GdalEnv, JobRecipe, check_workers_can_open, get_job, make_recipe

__all__ = ["Broadcast", "dask_array", "open_client", "run_dask"]

log = logging.getLogger("tilecast.dask")


@dataclass(frozen=True)
class _Context:
    """What every chunk task of one run shares; scattered once to each worker."""

    recipe: JobRecipe
    layout: ChunkLayout
    writer: Any


class Broadcast:
    """A value every task of a run shares, on every worker; scattered again when the last copy was lost with its
    workers (a scattered value has no task that could recompute it, so its tasks would be cancelled)."""

    def __init__(self, client: Any, value: Any) -> None:
        self.client = client
        self.value = value
        self._future = client.scatter(value, broadcast=True, hash=False)

    def future(self) -> Any:
        if self._future.status != "finished":
            self._future = self.client.scatter(self.value, broadcast=True, hash=False)
        return self._future


def _worker_threads() -> int | None:
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except Exception:
        return None


def _compute(ctx: _Context, index: int) -> tuple[Any, np.ndarray, ChunkStats]:
    recipe = ctx.recipe
    if recipe.threads is None and recipe.runtime[0] == "onnx":
        threads = _worker_threads()
        if threads:
            recipe = JobRecipe(recipe.token, recipe.runtime, recipe.source, recipe.job, recipe.env, threads)
    entry = get_job(recipe)
    log.debug("chunk %d with GDAL settings %r", index, recipe.env)
    with recipe.env.apply():
        # Reads run on the task's own thread: the worker's threads already overlap one task's reads with another's
        # inference, and each reading thread has its own GDAL handle, which decodes shared blocks again.
        return compute_chunk(entry.job, ctx.layout, index, None, entry.infer_lock)


# Every task's work runs inside ``env.apply()`` (``get_job`` builds the job inside it too), which also makes the
# task's error reach the client as itself.


def _chunk_task(ctx: _Context, index: int) -> tuple[ChunkStats, Any, np.ndarray | None]:
    window, data, stats = _compute(ctx, index)
    if ctx.writer is None:
        return stats, window, data
    with ctx.recipe.env.apply():
        ctx.writer.write(window, data)
    return stats, window, None


def _chunk_array(ctx: _Context, index: int) -> np.ndarray:
    return _compute(ctx, index)[1]


@contextlib.contextmanager
def open_client(
    client: Any = None, scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
    memory_limit: str | int | None = None,
) -> Iterator[Any]:
    """The client to use: the one given, one for ``scheduler``, the current one, or a new LocalCluster."""
    distributed = require("distributed", "dask")
    if client is not None:
        yield client
        return
    if scheduler:
        with distributed.Client(scheduler) as c:
            yield c
        return
    if workers is None:
        try:
            yield distributed.get_client()
            return
        except ValueError:
            pass
    n = workers or 1
    threads = threads_per_worker or max(1, (os.cpu_count() or 1) // n)
    try:
        import bokeh  # noqa: F401

        dashboard: str | None = "127.0.0.1:0"
    except ImportError:
        dashboard = None
    kwargs: dict[str, Any] = {"n_workers": n, "threads_per_worker": threads, "processes": True,
                              "dashboard_address": dashboard}
    if memory_limit is not None:
        kwargs["memory_limit"] = memory_limit
    with distributed.LocalCluster(**kwargs) as cluster, distributed.Client(cluster) as c:
        yield c


def run_dask(
    job: Job,
    sink: Any,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
    chunk_size: int | tuple[int, int] | None = None,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    performance_report: str | os.PathLike | None = None,
    env: GdalEnv | None = None,
    in_flight: int | None = None,
) -> Any:
    """Execute ``job`` on Dask into a :class:`~tilecast.sinks.chunked.ChunkSink`; returns what ``close`` returns.

    Unless tilecast itself reports an error (which would recur), the partial output and manifest are kept when the
    run stops, so ``resume=True`` continues it.
    """
    distributed = require("distributed", "dask")
    layout = ChunkLayout.create(job.plan, job.blending, chunk_size)
    recipe = make_recipe(job, env)
    done = sink.prepare(job.profile, fingerprint(job, layout), chunk_shape(layout), resume)
    total = len(job.plan)
    tile_pixels = job.plan.geometry.tile.x * job.plan.geometry.tile.y
    tiles_done = sum(layout.own_tiles(i) for i in done)
    todo = [i for i in range(len(layout)) if i not in done]
    futures: list[Any] = []
    try:
        with open_client(client, scheduler, workers) as c:
            check_workers_can_open(c, recipe.source)
            if progress is not None:
                link = getattr(c, "dashboard_link", None) if _has_dashboard(c) else None
                print(f"dask: {len(todo)} chunk task(s) of {layout.rows} x {layout.cols} tiles on "
                      f"{len(c.scheduler_info().get('workers', {}))} worker(s)"
                      + (f"; dashboard {link}" if link else ""), file=sys.stderr)
            report = (distributed.performance_report(filename=str(performance_report)) if performance_report
                      else contextlib.nullcontext())
            with report:
                ctx = Broadcast(c, _Context(recipe, layout, sink.writer()))
                limit = in_flight or max(4, 4 * sum(c.nthreads().values()))
                queue = iter(todo)
                ac = distributed.as_completed()
                tries: dict[str, tuple[int, int]] = {}

                def submit(index: int | None = None, attempt: int = 0) -> None:
                    index = next(queue, None) if index is None else index
                    if index is not None:
                        key = f"tilecast-chunk-{index}-{recipe.token}" + (f"-retry{attempt}" if attempt else "")
                        fut = c.submit(_chunk_task, ctx.future(), index, key=key, pure=False)
                        tries[fut.key] = (index, attempt)
                        futures.append(fut)
                        ac.add(fut)

                for _ in range(limit):
                    submit()
                for fut in ac:
                    try:
                        stats, window, data = fut.result()
                    except concurrent.futures.CancelledError:
                        # Its worker died holding the last copy of the context: Dask cannot recompute a scattered
                        # value, so it cancels the task; scatter the context again and resubmit (3 times at most).
                        index, attempt = tries.pop(fut.key)
                        if attempt >= 3:
                            raise
                        futures.remove(fut)
                        submit(index, attempt + 1)
                        continue
                    tries.pop(fut.key, None)
                    if data is not None:
                        sink.write(window, data)
                    sink.mark([stats.index])
                    tiles_done += stats.tiles
                    futures.remove(fut)
                    fut.release()
                    submit()
                    if progress is not None:
                        progress(tiles_done, total, tiles_done * tile_pixels)
                if getattr(sink, "manifest", None) is not None:
                    sink.manifest.flush()
                note(progress, sink)
                if sink.writer() is not None:  # finalise (e.g. build the COG) on a worker, next to the data
                    return c.submit(_close, sink, recipe.env, pure=False).result()
                return sink.close()
    except BaseException as exc:
        for fut in futures:
            with contextlib.suppress(Exception):
                fut.cancel()
        sink.abort(keep=not isinstance(exc, TilecastError))
        raise


def _close(sink: Any, env: GdalEnv) -> Any:
    with env.apply():
        return sink.close()


def _has_dashboard(client: Any) -> bool:
    try:
        import bokeh  # noqa: F401  (the dashboard needs it)

        return bool(client.scheduler_info().get("services", {}).get("dashboard"))
    except Exception:
        return False


def dask_array(job: Job, chunk_size: int | tuple[int, int] | None = None, env: GdalEnv | None = None) -> Any:
    """A lazy ``(band, y, x)`` Dask array of the prediction; each block is one chunk task."""
    da = require("dask.array", "dask")
    from dask.highlevelgraph import HighLevelGraph

    layout = ChunkLayout.create(job.plan, job.blending, chunk_size)
    recipe = make_recipe(job, env)
    client = _default_client()
    if client is not None:  # the threaded scheduler runs in this process; a distributed client may not
        check_workers_can_open(client, recipe.source)
    name = f"tilecast-predict-{recipe.token}"
    ctx_key = f"tilecast-context-{recipe.token}"
    dsk: dict[Any, Any] = {ctx_key: _Context(recipe, layout, None)}
    for index in range(len(layout)):
        i, j = layout.position(index)
        dsk[(name, 0, i, j)] = (_chunk_array, ctx_key, index)
    ys, xs = layout.chunks_shape()
    n = len(job.profile.band_names)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=((n,), ys, xs), dtype=job.profile.dtype)


def _default_client() -> Any:
    """The distributed client that would compute a Dask collection now, or None (Dask's local schedulers)."""
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


def check_engine(engine: str) -> str:
    if engine not in ("local", "dask"):
        raise SpecError(f"unknown engine {engine!r}; use 'local' (threads on this machine) or 'dask'")
    return engine
