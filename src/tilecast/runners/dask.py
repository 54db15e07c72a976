"""The Dask runner: output chunks of whole tiles as Dask tasks, on a LocalCluster or any distributed cluster.

Each task reads its own tiles' input windows (with halo) straight from the source, runs the model in batches and
writes its chunk straight into the output (GeoTIFF under a file lock, or Zarr), so neither inputs nor outputs pass
through the client. There is no ``map_overlap`` over a Dask array of the input: a task's memory is one chunk.

The model is never pickled per task. The client scatters one small :class:`~tilecast.runners.recipe.JobRecipe`
(model path and options, source path and bands, plan and bindings, GDAL settings) to the workers; each worker
process loads the model the first time and caches it. Retries after a lost worker simply recompute the chunk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._extras import require
from ..errors import TilecastError
from ..job import Job
from ..progress import ProgressCallback, note
from ..sinks.base import Checkpointed
from .chunks import ChunkLayout, ChunkStats, chunk_shape, compute_chunk, fingerprint
from .dask_tasks import (
    Broadcast,
    announce,
    has_dashboard,
    open_client,
    result_of,
    run_tasks,
    session,
    worker_task,
)
from .engine import Dask
from .local import refuse_inputs
from .recipe import GdalEnv, JobRecipe, check_workers_can_open, get_job, make_recipe

__all__ = ["Broadcast", "dask_array", "has_dashboard", "open_client", "run_dask", "run_tasks"]

log = logging.getLogger("tilecast.dask")


@dataclass(frozen=True)
class _Context:
    """What every chunk task of one run shares; scattered once to each worker."""

    recipe: JobRecipe
    layout: ChunkLayout
    writer: Any


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
        return compute_chunk(entry.job, ctx.layout, index, None, entry.infer_slots, reuse=entry.reuse)


# Every task's work runs inside ``env.apply()`` (``get_job`` builds the job inside it too), which also makes the
# task's error reach the client as itself.


@worker_task
def _chunk_task(ctx: _Context, index: int) -> tuple[ChunkStats, Any, np.ndarray | None]:
    window, data, stats = _compute(ctx, index)
    if ctx.writer is None:
        return stats, window, data
    with ctx.recipe.env.apply(writing=True):
        ctx.writer.write(window, data)
    return stats, window, None


@worker_task
def _chunk_array(ctx: _Context, index: int) -> np.ndarray:
    return _compute(ctx, index)[1]


def run_dask(
    job: Job,
    sink: Any,
    progress: ProgressCallback | None = None,
    *,
    resume: bool = False,
    chunk_size: int | tuple[int, int] | None = None,
    engine: Dask | None = None,
    env: GdalEnv | None = None,
) -> Any:
    """Execute ``job`` on Dask into a :class:`~tilecast.sinks.chunked.ChunkSink`; returns what ``close`` returns.

    Unless tilecast itself reports an error (which would recur), the partial output and manifest are kept when the
    run stops, so ``resume=True`` continues it.
    """
    require("distributed", "dask")
    refuse_inputs(job, sink)  # before the cluster: a custom sink's path can be one of the inputs too
    engine = engine or Dask()
    layout = ChunkLayout.create(job.plan, job.blending, chunk_size)
    recipe = make_recipe(job, env)
    total = len(job.plan)
    tile_pixels = job.plan.geometry.tile.x * job.plan.geometry.tile.y
    prepared = False
    try:
        # The client first: a scheduler that cannot be reached (or workers that cannot open the input) must not
        # create a partial output, nor, being a tilecast error, remove the one an interrupted run left to resume.
        with session(engine, recipe.source) as c:
            done = sink.prepare(job.profile, fingerprint(job, layout), chunk_shape(layout), resume)
            prepared = True
            tiles_done = sum(layout.own_tiles(i) for i in done)
            todo = [i for i in range(len(layout)) if i not in done]
            announce(c, f"{len(todo)} chunk task(s) of {layout.rows} x {layout.cols} tiles", progress)
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

            run_tasks(c, submit, todo, finished, in_flight=engine.in_flight or max(4, 4 * sum(c.nthreads().values())))
            if isinstance(sink, Checkpointed):
                sink.checkpoint()
            note(progress, sink)
            if sink.writer() is not None:  # finalise (e.g. build the COG) on a worker, next to the data
                return result_of(c, c.submit(_close, sink, recipe.env, pure=False))
            return sink.close()
    except BaseException as exc:
        if prepared:  # after the session, so that a LocalCluster tilecast started no longer writes into it
            # A tilecast error would recur (a wrong model output, a bad cast), except one about the cluster itself.
            keep = not isinstance(exc, TilecastError) or exc.resumable
            try:
                sink.abort(keep=keep)
            except Exception as failure:  # e.g. the output folder is gone: the run's own error is the one to see
                exc.add_note(f"tilecast could not {'keep' if keep else 'remove'} the partial output either: "
                             f"{type(failure).__name__}: {failure}")
        raise


@worker_task
def _close(sink: Any, env: GdalEnv) -> Any:
    with env.apply(writing=True):
        return sink.close()


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
