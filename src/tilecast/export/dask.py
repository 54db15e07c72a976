"""Image export on Dask: chunks of whole patch rows, each a task that reads its windows and writes its own shards.

The client plans the export exactly as the local one does (:func:`~tilecast.export.image.plan_image`), then sends
one small context (the source *recipe*, not an open GDAL handle; the :class:`~tilecast.export.image.ImagePlan`) to
every worker. Chunk ``i`` covers patch rows ``[i * rows, (i + 1) * rows)`` and writes
``{prefix}-{i:05d}-{n:05d}.tfrecord[.gz]``, sharded by ``maxFileSize`` inside the chunk. Sorting the names
lexicographically therefore walks the chunks in order and each chunk's shards in order, which is Earth Engine's
row-major patch order: the decoded examples are the local export's, in the same order. Tasks write into a hidden
staging folder next to the output; once every chunk is done, the client moves the shards into place and writes the
mixer (identical to the local one) and the spec. A failed run leaves nothing behind.

The scaffolding (client, staging folder, announcement, gathering, resubmitting) is :mod:`tilecast.runners.dask_tasks`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..runners import dask_tasks
from ..runners.dask_tasks import Broadcast, announce, gather, name_width, session, staging_folder, worker_source
from ..runners.engine import Dask
from .common import ExportResult, chunk_prefix, remove_stale, shard_files
from .image import ImagePlan, finish_image, patch_records
from .tfrecord import ShardedWriter

__all__ = ["chunk_rows_for", "write_image_dask"]

_MAX_PATCHES_PER_CHUNK = 4096
"""More patches than this in one task would make a retry after a lost worker expensive."""


@dataclass(frozen=True)
class _Context:
    """What every chunk task shares; scattered once to each worker."""

    source: tuple
    """A recipe from :func:`tilecast.runners.recipe.source_recipe`: each worker opens the source itself."""
    env: Any
    plan: ImagePlan
    folder: str
    """A hidden staging folder inside the output folder: shards move into place only when every chunk is done."""
    rows: int
    width: int
    """Digits of the chunk number in file names, so that names sort in chunk order."""


@dataclass(frozen=True)
class _ChunkResult:
    index: int
    files: list[str]
    written: int
    skipped: int
    tiles: int


@dask_tasks.worker_task
def _chunk_task(ctx: _Context, index: int) -> _ChunkResult:
    plan, opts = ctx.plan.plan, ctx.plan.opts
    r0, r1 = index * ctx.rows, min((index + 1) * ctx.rows, plan.tile_rows)
    written = skipped = 0
    with worker_source(ctx.source, ctx.env) as source:
        # overwrite=True: a retried chunk (its worker lost after publishing) replaces its own shards only; the
        # client has already refused to overwrite an earlier export.
        writer = ShardedWriter(ctx.folder, chunk_prefix(ctx.plan.prefix, index, ctx.width), opts.compressed,
                               opts.max_file_size, None, overwrite=True)
        try:
            for r in range(r0, r1):
                for c in range(plan.tile_cols):
                    records = patch_records(source, plan.tile(r, c), ctx.plan)
                    if records is None:
                        skipped += 1
                        continue
                    for rec in records:
                        writer.write(rec)
                    written += 1
            if writer.count == 0:  # no empty shards in the middle of an export
                writer.abort()
                files: list[Path] = []
            else:
                files = writer.close()
        except BaseException:
            writer.abort()
            raise
    return _ChunkResult(index, [f.name for f in files], written, skipped, (r1 - r0) * plan.tile_cols)


def chunk_rows_for(tile_rows: int, tile_cols: int, threads: int, rows: int | None = None) -> int:
    """Patch rows per task: two tasks per worker thread, but no more than a few thousand patches per task."""
    if rows is not None:
        if rows <= 0:
            raise SpecError(f"chunk_rows must be > 0 patch rows, got {rows}")
        return rows
    chunks = max(2 * max(threads, 1), math.ceil(tile_rows * tile_cols / _MAX_PATCHES_PER_CHUNK))
    return max(1, math.ceil(tile_rows / chunks))


def write_image_dask(p: ImagePlan, recipe: tuple, engine: Dask, progress: Callable | None) -> ExportResult:
    """Run the planned export on Dask; ``recipe`` reopens its source on the workers, and the output folder must be
    shared by them (a LocalCluster, or a shared filesystem). ``engine.chunk_rows`` sets the patch rows per task."""
    from ..runners.recipe import GdalEnv

    folder, opts, plan = p.folder, p.opts, p.plan
    before = set(shard_files(folder, p.prefix))  # plan_image refused them unless overwrite=True
    with staging_folder(folder, p.prefix) as staging, session(engine, recipe) as c:
        rows = chunk_rows_for(plan.tile_rows, plan.tile_cols, sum(c.nthreads().values()), engine.chunk_rows)
        n = math.ceil(plan.tile_rows / rows)
        ctx = _Context(recipe, GdalEnv.capture(), p, str(staging), rows, name_width(n))
        announce(c, f"{n} chunk task(s) of {rows} patch row(s)", progress)
        shared = Broadcast(c, ctx)
        done = 0

        def advance(res: _ChunkResult) -> None:
            nonlocal done
            done += res.tiles
            if progress is not None:
                progress(done, len(plan), done * p.ph * p.pw)

        def submit(i: int, attempt: int) -> Any:
            return c.submit(_chunk_task, shared.future(), i, pure=False)

        results = gather(c, submit, n, advance)
        files = []
        for name in (name for r in results for name in r.files):
            os.replace(staging / name, folder / name)
            files.append(folder / name)
    remove_stale(before, files)
    if not files:  # like the local export: an export with no record still writes one (empty) file
        with ShardedWriter(folder, chunk_prefix(p.prefix, 0, ctx.width), opts.compressed, opts.max_file_size,
                           None, overwrite=True) as w:
            files = w.close()
    return finish_image(p, files, sum(r.written for r in results), sum(r.skipped for r in results))
