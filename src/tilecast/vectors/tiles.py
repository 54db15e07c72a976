"""The per-tile steps of a detector run, shared by the local and the Dask engine: read and batch through the
prediction's :class:`~tilecast.job.Job`, run the model, decode its outputs, and place each tile's objects in grid
pixels, flagged where the tile's edge cut them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..job import Job
from ..plan import Tile
from ..resources import Resources
from ..runners.ordered import batches, in_order
from ..runtimes.base import streams_of
from .decode import Detections, decode_batch, obb_corners
from .merge import Kind, Objects, TileGrid
from .metadata import DetectorSpec

__all__ = ["detect_tiles", "infer_batch", "kind_of", "tile_objects"]


def kind_of(spec: DetectorSpec, output_names: list[str]) -> Kind:
    if spec.det_type == "yolo_obb":
        return "rotated"
    if spec.det_type == "yolo_seg" or (spec.det_type == "torchvision" and any("mask" in n.lower()
                                                                               for n in output_names)):
        return "polygon"
    return "box"


def infer_batch(job: Job, spec: DetectorSpec, group: list[Any]) -> list[Detections]:
    """Pack, run and decode one batch of read tiles (the skipped ones excepted)."""
    work = [t for t in group if not t.skip]
    if not work:
        return []
    outputs = job.runtime.run(job.pack(work))
    n = len(work)
    if job.inputs.fixed_batch and n < job.inputs.batch_size:  # drop the zero tiles that filled the batch
        outputs = {k: np.asarray(v)[:n] for k, v in outputs.items()}
    g = job.plan.geometry
    return decode_batch(outputs, spec, n, (g.padded.y, g.padded.x))


class _MaskKeeper:
    """Reads through the job's source and keeps each window's input mask until its tile's objects are placed:
    :class:`~tilecast.job.TileData` keeps only the output mask of the core, and an object centred in the halo
    needs the input mask there too."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.grid, self.band_names, self.dtype = source.grid, source.band_names, source.dtype
        self.properties = source.properties
        self.masks: dict[tuple[int, int, int, int], np.ndarray | None] = {}

    def read(self, window: Any) -> tuple[np.ndarray, np.ndarray | None]:
        data, valid = self.source.read(window)
        self.masks[_key(window)] = valid
        return data, valid

    def close(self) -> None:
        """The job's source is closed by its owner."""

    def view_valid(self, tile: Tile) -> np.ndarray | None:
        """The input mask of the tile's view (core and halo), padding outside the raster valid; None: all valid."""
        valid = self.masks.pop(_key(tile.read), None)
        if valid is None or valid.all():
            return None
        return np.pad(valid, tile.pad, constant_values=True)


def _key(window: Any) -> tuple[int, int, int, int]:
    return int(window.col_off), int(window.row_off), int(window.width), int(window.height)


def detect_tiles(job: Job, spec: DetectorSpec, tiles: list[Tile] | None = None,
                 read_threads: int | None = None) -> Iterator[tuple[Tile, Detections | None]]:
    """Each tile of ``tiles`` (default: the plan) with its decoded objects, in order; reads and model calls run
    ahead on threads, as in the local raster runner. Each tile's :attr:`Detections.valid` is its view's input mask
    (masked pixels of a partly masked tile); a wholly masked tile has no objects (None)."""
    tiles = list(job.plan.tiles()) if tiles is None else tiles
    threads = read_threads or Resources.detect().read_threads
    streams = streams_of(job.runtime)
    in_flight = max(2 * job.inputs.batch_size, threads * 2)
    keeper = _MaskKeeper(job.source)
    reading = dataclasses.replace(job, source=keeper)
    with ThreadPoolExecutor(threads, thread_name_prefix="tilecast-read") as pool, \
            ThreadPoolExecutor(streams, thread_name_prefix="tilecast-model") as models:
        reads = (item for _, item in in_order(pool, tiles, reading.read, in_flight))
        groups = batches(job, reads, len(tiles))
        for group, decoded in in_order(models, groups, lambda g: infer_batch(job, spec, g), streams):
            it = iter(decoded)
            for item in group:
                valid = keeper.view_valid(item.tile)
                if item.skip:
                    yield item.tile, None
                    continue
                dets = next(it)
                dets.valid = valid
                yield item.tile, dets


def _mask_polygon(mask: np.ndarray, row: int, col: int) -> Any:
    import shapely
    from affine import Affine
    from rasterio.features import shapes

    if mask.size == 0 or not mask.any():
        return shapely.Polygon()
    parts = [shapely.geometry.shape(g) for g, _ in
             shapes(mask.astype(np.uint8), mask=mask, connectivity=4, transform=Affine.translation(col, row))]
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def tile_objects(tile: Tile, dets: Detections, grid: TileGrid, kind: Kind, tol: float = 1.0) -> Objects:
    """A tile's objects in grid pixels: boxes, oriented boxes or mask polygons, flagged where the tile's edge
    (towards a neighbour) cut them; objects centred outside the region (they belong to no tile) or on a masked
    input pixel (nodata: no object can be there) are dropped."""
    import shapely

    n = len(dets)
    if n == 0:
        return Objects.empty()
    x0, y0 = grid.origin(tile.row, tile.col)
    b = dets.boxes + np.array([x0, y0, x0, y0], dtype=np.float64)
    if kind == "rotated" and dets.rboxes is not None and dets.angles is not None:
        geoms = shapely.polygons(obb_corners(dets.rboxes, dets.angles) + np.array([x0, y0]))
    elif kind == "polygon" and dets.masks is not None:
        geoms = np.asarray([_mask_polygon(m, r + y0, c + x0) for m, r, c in dets.masks], dtype=object)
    else:
        geoms = shapely.box(b[:, 0], b[:, 1], b[:, 2], b[:, 3])
    v = grid.views(np.array([tile.row]), np.array([tile.col]))[0]
    last_r, last_c = grid.rows - 1, grid.cols - 1
    truncated = ((tile.col > 0) & (b[:, 0] <= v[0] + tol)) | ((tile.col < last_c) & (b[:, 2] >= v[2] - tol)) | \
        ((tile.row > 0) & (b[:, 1] <= v[1] + tol)) | ((tile.row < last_r) & (b[:, 3] >= v[3] - tol))
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    rx0, ry0 = grid.x0, grid.y0
    rx1, ry1 = rx0 + grid.region_width, ry0 + grid.region_height
    keep = (cx >= rx0) & (cx < rx1) & (cy >= ry0) & (cy < ry1) & ~shapely.is_empty(geoms)
    if dets.valid is not None:  # an object centred on a masked input pixel is dropped, whichever tile saw it
        vh, vw = dets.valid.shape
        px = np.clip(np.floor(cx - x0).astype(np.int64), 0, vw - 1)
        py = np.clip(np.floor(cy - y0).astype(np.int64), 0, vh - 1)
        keep &= dets.valid[py, px]
    idx = np.flatnonzero(keep)
    return Objects(geoms[idx], dets.scores[idx], dets.classes[idx], np.full(idx.size, tile.row, np.int32),
                   np.full(idx.size, tile.col, np.int32), truncated[idx])
