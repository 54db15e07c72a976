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
import itertools
import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._extras import require
from ..errors import SpecError, TilecastError
from ..job import Job
from ..progress import ProgressCallback, note
from .chunks import ChunkLayout, ChunkStats, chunk_shape, compute_chunk, fingerprint
from .recipe import GdalEnv, JobRecipe, check_workers_can_open, get_job, make_recipe

__all__ = ["Broadcast", "dask_array", "open_client", "run_dask", "run_tasks"]

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
        return compute_chunk(entry.job, ctx.layout, index, None, entry.infer_slots)


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


def run_tasks(
    client: Any,
    submit: Callable[[int, int], Any],
    indices: Iterable[int],
    on_result: Callable[[Any], None],
    *,
    in_flight: int | None = None,
    retries: int = 3,
) -> None:
    """Run ``submit(index, attempt)`` for every index, at most ``in_flight`` at a time (all at once by default),
    handing each result to ``on_result`` as it comes in and releasing its future; on a failure the remaining tasks
    are cancelled and the error raised.

    Dask retries a task whose worker died, but not one whose *scattered* input died with it: the scheduler cancels
    that task. Such a task is submitted again with ``attempt + 1`` (the caller scatters its inputs anew, e.g. with
    :class:`Broadcast`), at most ``retries`` times; a retry rewrites what the lost attempt wrote.
    """
    distributed = require("distributed", "dask")
    queue = iter(indices)
    pending = distributed.as_completed()
    live: dict[str, tuple[Any, int, int]] = {}  # key -> (future, index, attempt)

    def start(index: int, attempt: int = 0) -> None:
        fut = submit(index, attempt)
        live[fut.key] = (fut, index, attempt)
        pending.add(fut)

    try:
        for index in itertools.islice(queue, in_flight):
            start(index)
        for fut in pending:
            _, index, attempt = live.pop(fut.key)
            try:
                # A task that had finished can still be lost before its result is in (its worker dies meanwhile).
                result = fut.result()
            except concurrent.futures.CancelledError:
                if attempt >= retries:
                    raise
                fut.release()
                start(index, attempt + 1)
                continue
            fut.release()
            on_result(result)
            nxt = next(queue, None)
            if nxt is not None:
                start(nxt)
    except BaseException:
        for fut, _, _ in live.values():
            with contextlib.suppress(Exception):
                fut.cancel()
        raise


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
    try:
        with open_client(client, scheduler, workers) as c:
            check_workers_can_open(c, recipe.source)
            if progress is not None:
                link = getattr(c, "dashboard_link", None) if has_dashboard(c) else None
                print(f"dask: {len(todo)} chunk task(s) of {layout.rows} x {layout.cols} tiles on "
                      f"{len(c.scheduler_info().get('workers', {}))} worker(s)"
                      + (f"; dashboard {link}" if link else ""), file=sys.stderr)
            report = (distributed.performance_report(filename=str(performance_report)) if performance_report
                      else contextlib.nullcontext())
            with report:
                ctx = Broadcast(c, _Context(recipe, layout, sink.writer()))

                def submit(index: int, attempt: int) -> Any:
                    key = f"tilecast-chunk-{index}-{recipe.token}" + (f"-retry{attempt}" if attempt else "")
                    return c.submit(_chunk_task, ctx.future(), index, key=key, pure=False)

                def finished(result: tuple[ChunkStats, Any, np.ndarray | None]) -> None:
                    nonlocal tiles_done
                    stats, window, data = result
                    if data is not None:
                        sink.write(window, data)
                    sink.mark([stats.index])
                    tiles_done += stats.tiles
                    if progress is not None:
                        progress(tiles_done, total, tiles_done * tile_pixels)

                run_tasks(c, submit, todo, finished,
                          in_flight=in_flight or max(4, 4 * sum(c.nthreads().values())))
                if getattr(sink, "manifest", None) is not None:
                    sink.manifest.flush()
                note(progress, sink)
                if sink.writer() is not None:  # finalise (e.g. build the COG) on a worker, next to the data
                    return c.submit(_close, sink, recipe.env, pure=False).result()
                return sink.close()
    except BaseException as exc:
        sink.abort(keep=not isinstance(exc, TilecastError))
        raise


def _close(sink: Any, env: GdalEnv) -> Any:
    with env.apply():
        return sink.close()


def has_dashboard(client: Any) -> bool:
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
