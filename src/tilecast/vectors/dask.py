"""The Dask engine for detectors: read, model and decoding as tasks per block of tile rows; merging on the client.

Each task rebuilds the job once per worker from a small recipe (as the raster Dask runner does) and returns every
tile's objects in grid pixels. The client feeds them to the same :class:`~tilecast.vectors.merge.SeamMerger`, in
plan order, as the local engine does, so both engines give identical features. Only a few blocks are in flight at
once, so the client holds a bounded number of tiles' objects.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Any

from ..job import Job
from ..plan import Tile
from ..runners.recipe import JobRecipe, check_workers_can_open, errors_reach_client, get_job, make_recipe
from .merge import Kind, Objects, TileGrid
from .metadata import DetectorSpec
from .tiles import detect_tiles, tile_objects

__all__ = ["dask_tile_objects"]


def _block(recipe: JobRecipe, spec: DetectorSpec, kind: Kind, rows: tuple[int, int]) -> list[tuple[int, int, Objects]]:
    with errors_reach_client():
        job = get_job(recipe).job
        plan = job.plan
        grid = TileGrid(plan)
        tiles = [plan.tile(r, c) for r in range(*rows) for c in range(plan.tile_cols)]
        return [(t.row, t.col, Objects.empty() if d is None else tile_objects(t, d, grid, kind))
                for t, d in detect_tiles(job, spec, tiles, read_threads=1)]


def dask_tile_objects(job: Job, spec: DetectorSpec, kind: Kind, *, client: Any = None, scheduler: str | None = None,
                      workers: int | None = None, rows_per_task: int = 1,
                      in_flight: int | None = None) -> Iterator[tuple[Tile, Objects]]:
    """Every tile of ``job``'s plan with its objects, in plan order, computed on a Dask cluster."""
    from ..runners.dask import open_client

    plan = job.plan
    recipe = make_recipe(job)
    blocks = [(r, min(r + rows_per_task, plan.tile_rows)) for r in range(0, plan.tile_rows, rows_per_task)]
    with open_client(client, scheduler, workers) as c:
        check_workers_can_open(c, recipe.source)
        ahead = in_flight or 2 * max(1, len(c.scheduler_info().get("workers", {})))
        shipped = c.scatter(recipe, broadcast=True, hash=False)
        running: deque[Any] = deque()
        todo = iter(blocks)
        for block in todo:
            running.append(c.submit(_block, shipped, spec, kind, block, pure=False))
            if len(running) >= ahead:
                break
        while running:
            future = running.popleft()
            nxt = next(todo, None)
            if nxt is not None:
                running.append(c.submit(_block, shipped, spec, kind, nxt, pure=False))
            for r, col, objects in future.result():
                yield plan.tile(r, col), objects
