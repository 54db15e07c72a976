"""Sample and patch exports on Dask: the client decides *which* samples, the workers read and encode them.

Selection (candidates, the seeded ``n``/``per_class`` draw, the blocked splits, ``geometries``) runs on the client
exactly as in the local export, so it cannot depend on the number of workers. The client then orders the samples
as the local export reads them (chunk by chunk of the raster, :func:`~tilecast.export.reading.group_order`) and
cuts that order into contiguous tasks, at chunk boundaries where possible, so a task reads compact windows. A task
gets its samples' coordinates, labels and properties (never pixels), opens the source from a recipe with the
client's GDAL settings, and writes its records, in the local order, with the local export's own writer into its own
folder inside a hidden staging folder. Nothing goes back to the client but names and counts.

Publishing, once every task is done:

- one file per split (a ``.tfrecord[.gz]``, ``.parquet`` or ``.csv`` file, or a folder without ``max_file_size``,
  whose single shard is ``{prefix}-00000``): a worker concatenates the tasks' parts in task order, without
  decoding them (GZIP members and TFRecord frames concatenate; CSV keeps the first header; Parquet copies row
  groups). The name, the records and their order are the local export's; only the GZIP member boundaries (and
  Parquet row groups) differ, which no reader sees.
- ``max_file_size`` shards: task ``i`` shards its own records by size and its shards are published as
  ``{prefix}-{i:05d}-{n:05d}``, like the image export on Dask. Sorted by name they are in record order and each is
  at most ``max_file_size``, but a task's last shard is not filled up, so the shard boundaries (and count) differ
  from the local export's ``{prefix}-NNNNN``. That is unavoidable without a second pass: where the local export's
  boundaries fall depends on how many records every earlier task kept (masked centres are dropped), which is only
  known once the pixels are read. The spec lists the Dask names.

The spec is the local export's (same features, counts, seed...), listing these files. Everything is written in
the staging folder and moved into place at the end, so a failed run leaves nothing at the output.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import SpecError
from ..plan import XY
from ..runners import dask_tasks
from ..runners.dask_tasks import Broadcast, announce, gather, name_width, session, staging_folder, worker_source
from ..runners.engine import Dask
from .common import chunk_prefix, remove_stale
from .reading import group_order
from .samples import SamplePlan, write_samples
from .sampling import Samples
from .tfrecord import ShardedWriter
from .writers import TableWriter, Writers, empty_columns

__all__ = ["task_ranges", "write_samples_dask"]

_MAX_SAMPLES_PER_TASK = 100_000
"""A retried task (after a lost worker) should not redo much; also bounds the coordinates sent with a task."""
_MAX_PIXELS_PER_TASK = 1 << 24
"""Patch pixels (per band) per task: 4,096 patches of 64 x 64."""


@dataclass(frozen=True)
class _Context:
    """What every task shares; scattered once to each worker."""

    source: tuple
    """A recipe from :func:`tilecast.runners.recipe.source_recipe`: each worker opens the source itself."""
    env: Any
    plan: SamplePlan
    folder: str
    width: int


@dataclass(frozen=True)
class _TaskResult:
    index: int
    files: dict[str, list[str]]
    """Per split, the names of the files the task wrote in its own folder (none for a split it has no record of)."""
    counts: dict[str, int]
    skipped: int
    samples: int


def task_ranges(keys: np.ndarray, target: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges of about ``target`` positions over grouped ``keys`` (one key, or one
    row of keys, per position; a group is a run of equal keys), cut at group boundaries when a group fits (so a
    task reads each raster chunk once), inside a group otherwise."""
    if target <= 0:
        raise SpecError(f"samples_per_task must be > 0, got {target}")
    n = len(keys)
    change = keys[1:] != keys[:-1]
    if change.ndim > 1:
        change = change.any(axis=tuple(range(1, change.ndim)))
    starts = np.flatnonzero(np.r_[True, change])
    out, a = [], 0
    while a < n:
        if a + target >= n:
            b = n
        else:
            i = int(np.searchsorted(starts, a + target, side="right")) - 1  # the last group start <= a + target
            b = int(starts[i]) if starts[i] > a else a + target
        out.append((a, b))
        a = b
    return out


def _target(n: int, threads: int, patch: XY, samples_per_task: int | None) -> int:
    """Two tasks per worker thread, within the per-task limits; or what the caller asked for."""
    if samples_per_task is not None:
        return samples_per_task
    cap = max(1, min(_MAX_SAMPLES_PER_TASK, _MAX_PIXELS_PER_TASK // (patch.x * patch.y)))
    return max(1, min(cap, math.ceil(n / (2 * max(threads, 1)))))


@dask_tasks.worker_task
def _task(ctx: _Context, index: int, part: Samples) -> _TaskResult:
    folder = Path(ctx.folder) / f"{index:0{ctx.width}d}"
    with contextlib.suppress(FileExistsError):  # a retry after a lost worker reuses its folder
        folder.mkdir()  # not parents=True: when the staging folder is gone the run has failed; so does the task
    with worker_source(ctx.source, ctx.env) as source:
        writer = Writers(replace(ctx.plan.output, folder=folder), True)
        try:
            skipped = write_samples(source, ctx.plan, part, writer, None)
            files: dict[str, list[str]] = {}
            for s, w in writer.writers.items():
                if writer.counts[s]:
                    files[s] = [Path(f).name for f in w.close()]
                else:  # no empty parts: an empty Parquet file cannot even be written
                    w.abort()
                    files[s] = []
        except BaseException:
            writer.abort()
            raise
    return _TaskResult(index, files, dict(writer.counts), skipped, len(part))


@dask_tasks.worker_task
def _concat_task(fmt: str, parts: list[str], dest: str) -> str:
    """One file from the tasks' parts, in order, without decoding a record."""
    if fmt == "parquet":
        pq = require("pyarrow.parquet", "features")
        out = None
        try:
            for part in parts:
                f = pq.ParquetFile(part)
                for g in range(f.num_row_groups):
                    table = f.read_row_group(g)
                    out = out or pq.ParquetWriter(dest, table.schema)
                    out.write_table(table)
        finally:
            if out is not None:
                out.close()
        return dest
    with open(dest, "wb") as w:
        for k, part in enumerate(parts):
            with open(part, "rb") as r:
                if fmt == "csv" and k:
                    r.readline()  # the header, already written by the first part
                shutil.copyfileobj(r, w, 1 << 20)
    return dest


def _empty_output(writers: Writers, split: str, folder: Path, like: Path | None) -> Path:
    """The file the local export writes for a split without records, written in ``folder``: an empty TFRecord
    file, or a table with the columns of ``like`` (a part of another split; none when every sample was masked:
    then an empty CSV file, and for Parquet the local export's error)."""
    w = writers.writers[split]
    folder = folder / "empty"
    folder.mkdir(exist_ok=True)
    if isinstance(w, ShardedWriter):
        empty = ShardedWriter(folder, w.prefix, w.compressed, w.max_file_size, w.single_name, overwrite=True)
    else:
        empty = TableWriter(folder / w.path.name, w.fmt, True)
        if like is not None:
            empty.write(empty_columns(like, w.fmt))
    return Path(empty.close()[0])


def write_samples_dask(recipe: tuple, plan: SamplePlan, samples: Samples, writers: Writers, engine: Dask,
                       progress: Callable | None) -> tuple[dict[str, list[Path]], dict[str, int], int]:
    """Write the selected ``samples`` on Dask as :func:`~tilecast.export.samples.write_samples_local` would;
    ``recipe`` reopens the source on the workers, ``writers`` has checked the output names (and is not used to
    write). Returns ``(files per split, counts per split, skipped)``."""
    from ..runners.recipe import GdalEnv

    chunk, patch, folder = plan.chunk, plan.patch, plan.output.folder
    order = group_order(samples.rows, samples.cols, chunk)
    keys = np.stack([samples.rows[order] // chunk, samples.cols[order] // chunk], axis=1)  # the chunk read
    published: list[Path] = []
    with staging_folder(folder, plan.output.prefix("all")) as staging, session(engine, recipe) as c:
        ranges = task_ranges(keys, _target(len(order), sum(c.nthreads().values()), patch, engine.samples_per_task))
        width = name_width(len(ranges))
        ctx = _Context(recipe, GdalEnv.capture(), plan, str(staging), width)
        announce(c, f"{len(ranges)} task(s) of about {ranges[0][1] - ranges[0][0]} sample(s)", progress)
        shared = Broadcast(c, ctx)
        # Coordinates, labels and properties only (a few bytes per sample), scattered: not in the task graph. A part
        # lost with its worker is taken and scattered again (``resubmit``).
        parts = c.scatter([samples.take(order[a:b]) for a, b in ranges], hash=False)
        done = 0

        def advance(res: _TaskResult) -> None:
            nonlocal done
            done += res.samples
            if progress is not None:
                progress(done, len(order), done * patch.x * patch.y)

        def submit(i: int, attempt: int) -> Any:
            part, parts[i] = parts[i], None  # the cluster keeps a part only while its task needs it
            if attempt:
                a, b = ranges[i]
                part = c.scatter(samples.take(order[a:b]), hash=False)
            return c.submit(_task, shared.future(), i, part, pure=False)

        results = gather(c, submit, len(ranges), advance)
        moves = _moves(c, plan, writers, results, staging, width)
        files: dict[str, list[Path]] = {s: [] for s in writers.names}
        for s, src, dest in moves:
            os.replace(src, dest)
            files[s].append(dest)
            published.append(dest)
    remove_stale(writers.stale, published)
    counts = {s: sum(r.counts[s] for r in results) for s in writers.names}
    return files, counts, sum(r.skipped for r in results)


def _moves(c: Any, plan: SamplePlan, writers: Writers, results: list[_TaskResult], staging: Path, width: int
           ) -> list[tuple[str, Path, Path]]:
    """``(split, from, to)`` for every published file; parts of a single file are first concatenated on a worker."""
    out = plan.output
    single = out.fmt != "tfrecord" or out.max_file_size is None
    moves: list[tuple[str, Path, Path]] = []
    concat = []
    parts = {s: [(r.index, staging / f"{r.index:0{width}d}" / name) for r in results for name in r.files[s]]
             for s in writers.writers}
    like = next((path for found in parts.values() for _, path in found), None)
    for s, w in writers.writers.items():
        found = parts[s]
        if not found:  # like the local export: a split without records still gets its (empty) file
            found = [(0, _empty_output(writers, s, staging, like))]
        if single:
            name = found[0][1].name  # every part has the local export's name
            if len(found) == 1:
                moves.append((s, found[0][1], out.folder / name))
            else:
                dest = staging / name
                concat.append(c.submit(_concat_task, out.fmt, [str(p) for _, p in found], str(dest), pure=False))
                moves.append((s, dest, out.folder / name))
        else:
            for index, path in found:  # {prefix}-NNNNN.tfrecord.gz of task i -> {prefix}-i-NNNNN.tfrecord.gz
                moves.append((s, path, out.folder / (chunk_prefix(w.prefix, index, width) + path.name[len(w.prefix):])))
    if concat:
        c.gather(concat)
    return moves
