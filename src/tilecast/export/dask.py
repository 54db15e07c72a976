"""Image export on Dask: chunks of whole patch rows, each a task that reads its windows and writes its own shards.

The client plans the export exactly as the local one does, then sends one small context (the source *recipe*, not
an open GDAL handle; the plan; the band groups) to every worker. Chunk ``i`` covers patch rows
``[i * rows, (i + 1) * rows)`` and writes ``{prefix}-{i:05d}-{n:05d}.tfrecord[.gz]``, sharded by ``maxFileSize``
inside the chunk. Sorting the names lexicographically therefore walks the chunks in order and each chunk's shards in
order, which is Earth Engine's row-major patch order: the decoded examples are the local export's, in the same order.
Tasks write into a hidden staging folder next to the output; once every chunk is done, the client moves the shards
into place and writes the mixer (identical to the local one) and the spec. A failed run leaves nothing behind.

The helpers at the end (client, staging folder, task loop, stale shards) are shared with the sample and patch
exports on Dask, :mod:`tilecast.export.dask_samples`.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rasterio.windows import Window

from .._extras import require
from ..errors import InputError, SpecError
from ..plan import xy
from ..runners.dask import Broadcast, run_tasks
from ..sources import open_source
from .image import ImageExportOptions, _finish, _ImagePlan, _patch_records, _prepare, shard_files
from .reading import bounded_cache
from .samples import ExportResult, _progress
from .tfrecord import ShardedWriter

__all__ = ["export_image_dask"]

_MAX_PATCHES_PER_CHUNK = 4096
"""More patches than this in one task would make a retry after a lost worker expensive."""


@dataclass(frozen=True)
class _Context:
    """What every chunk task shares; scattered once to each worker."""

    source: tuple
    """A recipe from :func:`tilecast.runners.recipe.source_recipe`: each worker opens the source itself."""
    env: Any
    plan: _ImagePlan
    opts: ImageExportOptions
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


def chunk_prefix(prefix: str, index: int, width: int = 5) -> str:
    """The shard-name prefix of chunk ``index``: fixed width, so lexicographic order is chunk order."""
    return f"{prefix}-{index:0{width}d}"


@contextlib.contextmanager
def worker_source(recipe: tuple, env: Any) -> Iterator[Any]:
    """A task's source, opened on the worker from its recipe under the client's GDAL settings, closed after."""
    from ..runners.recipe import build_source

    with env.apply():
        source = build_source(recipe)
        try:
            yield source
        finally:
            if recipe[0] != "object":  # a source the worker opened itself (never the caller's own object)
                with contextlib.suppress(Exception):
                    source.close()


def _chunk_task(ctx: _Context, index: int) -> _ChunkResult:
    plan = ctx.plan.plan
    r0, r1 = index * ctx.rows, min((index + 1) * ctx.rows, plan.tile_rows)
    written = skipped = 0
    with worker_source(ctx.source, ctx.env) as source:
        # overwrite=True: a retried chunk (its worker lost after publishing) replaces its own shards only; the
        # client has already refused to overwrite an earlier export.
        writer = ShardedWriter(ctx.folder, chunk_prefix(ctx.plan.prefix, index, ctx.width), ctx.opts.compressed,
                               ctx.opts.max_file_size, None, overwrite=True)
        try:
            for r in range(r0, r1):
                for c in range(plan.tile_cols):
                    records = _patch_records(source, plan.tile(r, c), ctx.plan, ctx.opts)
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


def export_image_dask(
    image: Any,
    output: str | os.PathLike,
    patch: int | Sequence[int],
    *,
    kernel: int | Sequence[int] = 1,
    prefix: str | None = None,
    bands: Sequence[str | int] | None = None,
    bounds: Sequence[float] | None = None,
    window: Window | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    chunk_rows: int | None = None,
    **format_options: Any,
) -> ExportResult:
    """:func:`~tilecast.export.export_image` on Dask (``engine="dask"``); the output folder must be shared by the
    workers (a LocalCluster, or a shared filesystem). ``chunk_rows`` sets the patch rows per task."""
    from ..runners.recipe import GdalEnv, source_recipe, check_workers_can_open

    opts = ImageExportOptions.create(patch, kernel_size=xy(kernel, "kernelSize"), **format_options)
    folder = Path(output)
    if not folder.is_dir():
        raise InputError(f"the output folder {folder} does not exist; create it first (image exports are sharded)")
    report = _progress(progress, "export image")
    with bounded_cache():
        source = open_source(image, bands)
        try:
            p = _prepare(source, folder, opts, prefix, bounds, window, overwrite, image)
            grid = source.grid
            recipe = source_recipe(source)
        finally:
            source.close()
    before = set(shard_files(folder, p.prefix))  # _prepare refused them unless overwrite=True
    plan = p.plan
    with staging_folder(folder, p.prefix) as staging, open_client(client, scheduler, workers) as c:
        check_workers_can_open(c, recipe)
        threads = sum(c.nthreads().values())
        rows = chunk_rows_for(plan.tile_rows, plan.tile_cols, threads, chunk_rows)
        n = math.ceil(plan.tile_rows / rows)
        ctx = _Context(recipe, GdalEnv.capture(), p, opts, str(staging), rows, name_width(n))
        announce(c, f"{n} chunk task(s) of {rows} patch row(s)", report)
        shared = Broadcast(c, ctx)
        done = 0

        def advance(res: _ChunkResult) -> None:
            nonlocal done
            done += res.tiles
            if report is not None:
                report(done, len(plan), done * p.ph * p.pw)

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
    return _finish(grid, p, opts, folder, files, sum(r.written for r in results), sum(r.skipped for r in results))


# ---- shared by the Dask exports ---------------------------------------------------------------------------------


def name_width(tasks: int) -> int:
    """Digits of a task number in file names, so that names sort in task order."""
    return max(5, len(str(max(tasks - 1, 0))))


@contextlib.contextmanager
def open_client(client: Any = None, scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """The run's Dask client (:func:`tilecast.runners.dask.open_client`), or a clear error without the extra."""
    require("distributed", "dask")
    from ..runners.dask import open_client as _open

    with _open(client, scheduler, workers) as c:
        yield c


@contextlib.contextmanager
def staging_folder(folder: Path, prefix: str) -> Iterator[Path]:
    """A hidden folder inside the output folder where tasks write; removed at the end, whatever happens, so a
    failed run leaves nothing behind and a task still running after a failure finds it gone and fails instead of
    publishing."""
    staging = folder / f".{prefix}.dask-{uuid.uuid4().hex[:12]}.tmp"
    staging.mkdir()
    try:
        yield staging
    finally:
        # Cancelling a future does not stop a task that is already running: one may still create a file while
        # the folder is being removed. Retry briefly; such a task fails on its next file once the folder is gone.
        for attempt in range(10):
            shutil.rmtree(staging, ignore_errors=True)
            if not staging.exists():
                break
            time.sleep(0.1 * (attempt + 1))


def announce(client: Any, tasks: str, report: Callable | None) -> None:
    """One line on stderr (unless quiet): the tasks, the workers and the dashboard link."""
    if report is None:
        return
    from ..runners.dask import has_dashboard

    link = getattr(client, "dashboard_link", None) if has_dashboard(client) else None
    print(f"dask: {tasks} on {len(client.nthreads())} worker(s)" + (f"; dashboard {link}" if link else ""),
          file=sys.stderr)


def gather(client: Any, submit: Callable[[int, int], Any], n: int, advance: Callable[[Any], None] | None = None
           ) -> list[Any]:
    """The results of tasks ``0 .. n-1``, sorted by their ``index``; see :func:`tilecast.runners.dask.run_tasks`."""
    results: list[Any] = []

    def collect(result: Any) -> None:
        results.append(result)
        if advance is not None:
            advance(result)

    run_tasks(client, submit, range(n), collect)
    return sorted(results, key=lambda r: r.index)


def remove_stale(before: set[Path], published: Sequence[Path]) -> None:
    """``overwrite=True``: shards of the earlier export that the new one did not replace."""
    for old in before - set(published):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
