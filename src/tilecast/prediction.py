"""A planned prediction: lazy until written to a GeoTIFF or turned into an xarray object."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio

from ._gdal import gdal_cache
from .errors import SpecError
from .job import Job
from .plan import TilePlan
from .progress import Progress, ProgressCallback
from .runners.engine import Dask, Engine, Local, resolve_engine
from .sinks.base import OutputProfile, Sink
from .sources.base import Grid, Source
from .spec import check_nodata, default_nodata
from .tensors import bind_inputs, bind_outputs, needs_probe

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Prediction"]


GDAL_CACHE_BYTES = 256 * 2**20
"""GDAL's block cache during a local run when its need cannot be worked out (warped, mosaic or in-memory inputs)."""


def bounded_gdal_cache(job: Job) -> rasterio.Env:
    """GDAL's block cache defaults to 5% of RAM and fills up during a run: cap it to what ``job`` needs (see
    :func:`gdal_cache_bytes`), unless the user set it."""
    return gdal_cache(gdal_cache_bytes(job))


def gdal_cache_bytes(job: Job) -> int:
    """Room for the input blocks one row of tiles touches, for each reading thread (each has its own handle), plus
    two output strips, and half as much again; at least 64 MiB.

    Less than the blocks of a row of tiles and blocks are decoded twice (the I/O-bound benchmark takes 40% more CPU);
    more only fills memory with blocks that are never read again: every new block faults fresh pages in (0.26 CPU-s
    and 230 MiB of peak memory on the 6144 x 6144 benchmark at 256 MiB instead of 96).
    """
    from ._cpus import read_threads
    from .sources.rasterio_source import RasterioSource

    source = job.source
    if not isinstance(source, RasterioSource) or source.warped:
        return GDAL_CACHE_BYTES
    g = job.plan.geometry
    block_h = source.block_shape[0]
    rows = (math.ceil((g.tile.y + 2 * g.overlap.y) / block_h) + 1) * block_h
    need = read_threads() * rows * source.native.shape[1] * source.pixel_bytes
    out_h, out_w = job.plan.output_shape
    profile = job.profile
    need += 2 * min(out_h, 256) * out_w * len(profile.band_names) * np.dtype(profile.dtype).itemsize
    return max(64 * 2**20, int(1.5 * need))


class Prediction:
    """What :meth:`Model.predict_image` returns. Inspect ``plan`` and ``profile``; nothing runs until written."""

    def __init__(
        self, model: Model, source: Source, plan: TilePlan, append_input: bool = False,
        engine: Engine | str | None = None,
    ) -> None:
        self.model = model
        self.source = source
        self.plan = plan
        self.append_input = append_input
        self.engine = resolve_engine(engine)
        """Where the prediction runs unless a method is given another engine."""
        spec = model.spec
        self.inputs = bind_inputs(spec, model.signature, model.input_band_names(source.band_names), source.dtype,
                                  source.properties)
        self._job: Job | None = None

    @property
    def grid(self) -> Grid:
        """The output grid: the region, with pixels scaled by ``input_tile_size / output_tile_size``."""
        g = self.source.grid
        return Grid(g.crs, self.plan.output_transform(g.transform), self.plan.output_shape)

    @property
    def job(self) -> Job:
        if self._job is None:
            self._job = self._make_job()
        return self._job

    @property
    def profile(self) -> OutputProfile:
        return self.job.profile

    def _make_job(self) -> Job:
        spec, runtime = self.model.spec, self.model.runtime
        probe = None
        if needs_probe(spec, runtime.signature, self.inputs.layout):
            zero = np.zeros((len(self.source.band_names), spec.geometry.padded.y, spec.geometry.padded.x),
                            dtype=self.source.dtype)
            probe = runtime.run(self.inputs.pack([zero]))
        outputs = bind_outputs(spec, runtime.signature, self.inputs.layout, probe)
        band_dtypes: list[np.dtype] = []
        for band, depth in zip(outputs.bands, outputs.depths, strict=True):
            n = 1 if band.dimensions == 0 else depth
            band_dtypes.extend([band.dtype] * n)
            if spec.blend != "crop" and band.dtype.kind != "f":
                raise SpecError(
                    f"blend={spec.blend!r} averages values, but output band {band.name!r} is {band.dtype}; "
                    "declare a float dtype for blended outputs, or use blend='crop'"
                )
        names = list(outputs.band_names)
        if self.append_input:
            names = list(self.source.band_names) + names
            band_dtypes = [np.dtype(self.source.dtype)] * len(self.source.band_names) + band_dtypes
        dtype = np.result_type(*band_dtypes)
        nodata = spec.nodata if spec.nodata is not None else default_nodata(dtype)
        check_nodata(nodata, dtype)
        categorical = all(d.kind in "iub" for d in band_dtypes[-len(outputs.band_names):])
        tags = {"TILECAST_MODEL": str(getattr(self.model.runtime, "path", "") or type(self.model.runtime).__name__)}
        profile = OutputProfile(self.grid, tuple(names), np.dtype(dtype), nodata, outputs.bands, categorical, tags)
        return Job(self.plan, self.source, runtime, spec, self.inputs, outputs, profile, tuple(band_dtypes),
                   self.append_input)

    def run(
        self,
        sink: Sink,
        progress: bool | ProgressCallback | None = None,
        engine: Engine | str | None = None,
        *,
        resume: bool = False,
        chunk_size: int | tuple[int, int] | None = None,
        **dask_options: Any,
    ) -> Any:
        """Execute into ``sink`` and return what it returns on close.

        ``engine``: :class:`~tilecast.Local` (threads, streaming; the default) or :class:`~tilecast.Dask` (chunk
        tasks on a Dask cluster; ``"local"`` and ``"dask"`` name their defaults). ``resume`` continues an
        interrupted run of the same prediction into the same output, skipping finished chunks. ``chunk_size`` sets
        the output chunk edge of a chunked run. ``dask_options`` (``workers=``, ``client=``...) are deprecated: pass
        ``engine=tilecast.Dask(...)``.
        """
        chosen = resolve_engine(engine, self.engine, dask_options)
        if isinstance(chosen, Dask):  # Dask workers cap their own cache; the client's settings travel to them
            return self._run(sink, progress, chosen, resume, chunk_size)
        with bounded_gdal_cache(self.job):
            return self._run(sink, progress, chosen, resume, chunk_size)

    def _run(self, sink: Sink, progress: bool | ProgressCallback | None, engine: Engine, resume: bool,
             chunk_size: int | tuple[int, int] | None) -> Any:
        job = self.job
        callback = Progress() if progress is True else (progress or None)
        chunked = hasattr(sink, "prepare")
        local = isinstance(engine, Local)
        if local and not resume and not chunked:
            sink.open(job.profile)
            from .runners.local import run_local

            return run_local(job, sink, callback, read_threads=engine.threads)
        if not chunked:
            if resume:
                raise SpecError("resume needs a resumable output (to_geotiff or to_zarr), not a custom sink")
            from .sinks.chunked import BlockSinkAdapter

            sink = BlockSinkAdapter(sink)
        if local:
            from .runners.local import run_local_chunked

            return run_local_chunked(job, sink, callback, resume=resume, chunk_size=chunk_size,
                                     read_threads=engine.threads)
        from .runners.dask import run_dask

        return run_dask(job, sink, callback, resume=resume, chunk_size=chunk_size, engine=engine)

    def to_geotiff(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        progress: bool | ProgressCallback | None = None,
        compress: str = "DEFLATE",
        overviews: bool = True,
        engine: Engine | str | None = None,
        resume: bool = False,
        **dask_options: Any,
    ) -> Path:
        """Stream the prediction into a Cloud-Optimized GeoTIFF at ``path`` (atomically).

        With ``engine=tilecast.Dask(...)`` workers write their chunks into a partial GeoTIFF next to ``path`` and
        one of them builds the COG; with ``resume=True`` (either engine) an interrupted run continues where it
        stopped. ``chunk_size=`` sets the chunk edge of such a run.
        """
        from .sinks.chunked import PartialGeoTIFFSink
        from .sinks.geotiff import GeoTIFFSink

        chunk_size = dask_options.pop("chunk_size", None)
        chosen = resolve_engine(engine, self.engine, dask_options)
        if isinstance(chosen, Dask) or resume:
            sink: Any = PartialGeoTIFFSink(path, overwrite=overwrite, compress=compress, overviews=overviews)
        else:
            sink = GeoTIFFSink(path, overwrite=overwrite, compress=compress, overviews=overviews)
        return self.run(sink, progress, chosen, resume=resume, chunk_size=chunk_size)

    def to_zarr(
        self,
        path: str | os.PathLike,
        *,
        overwrite: bool = False,
        progress: bool | ProgressCallback | None = None,
        engine: Engine | str | None = None,
        resume: bool = False,
        chunk_size: int | tuple[int, int] | None = None,
        **dask_options: Any,
    ) -> Path:
        """Write a georeferenced Zarr store (``band, y, x``; chunks = whole tiles) that xarray opens lazily."""
        from .sinks.chunked import ZarrSink

        chosen = resolve_engine(engine, self.engine, dask_options)
        sink = ZarrSink(path, overwrite=overwrite)
        return self.run(sink, progress, chosen, resume=resume, chunk_size=chunk_size)

    def to_xarray(
        self,
        progress: bool | ProgressCallback | None = None,
        engine: Engine | str | None = None,
        chunk_size: int | tuple[int, int] | None = None,
    ):
        """The prediction as a georeferenced ``(band, y, x)`` DataArray.

        In memory with the local engine; with ``engine=tilecast.Dask()`` a lazy Dask-backed DataArray whose blocks
        are output chunks of whole tiles (nothing runs until computed, on the client current then).
        """
        chosen = resolve_engine(engine, self.engine)
        if isinstance(chosen, Dask):
            from .runners.dask import dask_array
            from .sinks.memory import to_dataarray

            return to_dataarray(dask_array(self.job, chunk_size), self.profile)
        from .sinks.memory import ArraySink

        return self.run(ArraySink(), progress, chosen)

    def to_numpy(self, progress: bool | ProgressCallback | None = None) -> np.ndarray:
        return self.to_xarray(progress).values

    def __repr__(self) -> str:
        h, w = self.plan.output_shape
        return f"<Prediction {len(self.plan)} tiles -> {w} x {h} px, source={self.source!r}>"
