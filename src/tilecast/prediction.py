"""A planned prediction: lazy until written to a GeoTIFF or turned into an xarray object."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import OutputError, SpecError, TileSizeError
from .job import Job
from .nodata import check_nodata, check_raster_dtype, default_nodata
from .plan import TilePlan, parse_size
from .progress import ProgressCallback, resolve
from .resources import bounded_gdal_cache, memory_available
from .runners.engine import Dask, Engine, Local, resolve_engine
from .runstats import RunStats, TimedRuntime
from .runtimes.base import model_path
from .sinks.base import ChunkSink, OutputProfile, Sink
from .sinks.memory import ArraySink
from .sinks.safety import refuse_overwriting_inputs
from .sources.base import Grid, Source
from .spec import with_default_colors
from .tensors import bind_inputs, bind_outputs, needs_probe

if TYPE_CHECKING:
    from .model import Model

__all__ = ["Prediction", "check_tile_memory", "compact_dtype"]

_GDAL_WARP_LIMIT = 2**31 - 1
"""GDAL's warper refuses a window whose buffer (pixels x bands x bytes per value) exceeds INT_MAX bytes."""


def compact_dtype(dtypes: list[np.dtype]) -> np.dtype:
    """The file's one dtype for outputs the user did not declare: the model's own, and where integer outputs (a
    class map) share the file with float ones, the float's width, not numpy's promotion of int64 + float32 to
    float64 for every band (class codes below 2**24 are exact in float32). A GeoTIFF band has no bool or float16
    type: such outputs (an fp16 model's) are written as uint8 and float32."""
    dtypes = [np.dtype(np.uint8 if d == np.bool_ else np.float32 if d == np.float16 else d) for d in dtypes]
    floats = [d for d in dtypes if np.dtype(d).kind == "f"]
    if floats and len(floats) < len(dtypes):
        return np.dtype(np.result_type(*floats))
    return np.dtype(np.result_type(*dtypes))


def check_tile_memory(spec: Any, plan: TilePlan, bands: int, dtype: np.dtype) -> None:
    """Refuse, before allocating anything, a tile that cannot fit: a batch of padded tiles and a row of output
    tiles must fit in the memory available, and a warped window in what GDAL's warper takes. A mistyped
    ``--tile 1000000000`` is then a one-line error instead of a MemoryError that leaves temporary files."""
    g = spec.geometry
    px = g.padded.x * g.padded.y
    tile = px * bands * max(dtype.itemsize, 4)  # read, then packed as (at least) float32
    batch = tile * spec.batch_size
    oo = g.output_overlap or g.out
    row = (g.out.y + 2 * oo.y + 2) * plan.output_shape[1] * (8 * max(1, len(spec.output_bands)) + 1)
    avail = memory_available()
    fix = "use a smaller --tile (input_tile_size, e.g. 256) or --batch-size"
    window = px * bands * dtype.itemsize
    if spec.fix_input_proj and window > _GDAL_WARP_LIMIT:
        raise TileSizeError(
            f"the padded tile of {g.padded.x} x {g.padded.y} px x {bands} band(s) is {window / 2**30:.1f} GiB, more "
            f"than the 2 GiB window GDAL's warper (fix_input_proj) takes; {fix}"
        )
    if 2 * batch + row > avail:
        raise TileSizeError(
            f"the tile of {g.tile.x} x {g.tile.y} px (padded {g.padded.x} x {g.padded.y}) x {bands} band(s) needs "
            f"about {(2 * batch + row) / 2**30:.1f} GiB for a batch of {spec.batch_size} and a row of output, more "
            f"than the {avail / 2**30:.1f} GiB available; {fix}"
        )


def _check_path(path: Any, method: str) -> None:
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise OutputError(f"{method} needs a path (a str or os.PathLike) to write to, got {path!r:.80}")


_RASTER_FILE_SUFFIXES = frozenset({".tif", ".tiff", ".vrt", ".jp2", ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp",
                                  ".img", ".nc", ".h5", ".hdf", ".asc", ".kea"})
"""Names of raster files GDAL writes: never given to a Zarr store, which is a folder."""


def _check_format(path: str | os.PathLike, method: str) -> None:
    """Refuse a path whose suffix names another format than ``method`` writes (a Zarr store under ``out.tif``, a
    folder GIS tools cannot open; a GeoTIFF under ``out.zarr``; vectors under ``out.tif``), and a GeoTIFF over a
    folder (which ``overwrite`` cannot replace), before anything runs."""
    from .vectors.errors import VectorFormatError
    from .vectors.write import VECTOR_FORMATS, is_vector_path

    suffix = Path(path).suffix.lower()
    if method == "to_vector":
        if not is_vector_path(path):
            other = "to_zarr()" if suffix == ".zarr" else "to_geotiff()" if suffix in _RASTER_FILE_SUFFIXES else ""
            hint = f", or {other} for a raster" if other else ""
            raise VectorFormatError(f"{path}: {suffix or 'no extension'} is not a vector format tilecast writes; use "
                                    f"one of {', '.join(VECTOR_FORMATS)}{hint}")
        return
    if is_vector_path(path):  # never a raster under a vector file's name
        raise VectorFormatError(f"{path} is a vector format; use to_vector() (or a .tif path for a raster)")
    if method == "to_zarr" and suffix in _RASTER_FILE_SUFFIXES:
        raise OutputError(f"{path} names a {suffix} raster file, but to_zarr writes a Zarr store (a folder); use "
                          f"to_geotiff({str(path)!r}) for a GeoTIFF, or a .zarr path for a Zarr store")
    if method == "to_geotiff" and suffix == ".zarr":
        raise OutputError(f"{path} names a Zarr store, but to_geotiff writes a GeoTIFF file; use "
                          f"to_zarr({str(path)!r}) for a Zarr store, or a .tif path for a GeoTIFF")
    if method == "to_geotiff" and Path(path).is_dir():
        raise OutputError(f"{path} is a folder, and to_geotiff writes a file (overwrite=True replaces files, not "
                          f"folders); give a file name, e.g. {Path(path) / 'prediction.tif'}")


def _chunk_size(value: Any) -> tuple[int, int] | None:
    """``chunk_size`` as ``(x, y)`` output pixels (one number, ``"512,256"`` or a pair), both positive."""
    if value is None:
        return None
    size = parse_size(value, "chunk_size")
    if min(size) < 1:
        raise SpecError(f"chunk_size must be positive output pixels per chunk edge (e.g. 2048), got {value!r}")
    return tuple(size)


def _refuse_lazy_progress(progress: Any) -> None:
    """The Dask engine's arrays are computed by Dask's scheduler, where tilecast's progress callback never runs."""
    if progress:
        raise SpecError("progress is not shown for the Dask engine's arrays (to_xarray, to_numpy): Dask computes "
                        "them. Leave progress out and watch with dask.diagnostics.ProgressBar() or the Dask dashboard, "
                        "or write with to_geotiff/to_zarr(engine=tilecast.Dask(...), progress=True)")


class _NumpySink(ArraySink):
    """An :class:`ArraySink` that returns its array as it is, not as a DataArray (which needs xarray)."""

    def close(self) -> np.ndarray:
        return self.array


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
        check_tile_memory(spec, self.plan, len(self.source.band_names), np.dtype(self.source.dtype))
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
        dtype = np.result_type(*band_dtypes) if spec.output_bands else compact_dtype(band_dtypes)
        check_raster_dtype(dtype, "the output")
        nodata = spec.nodata if spec.nodata is not None else default_nodata(dtype)
        check_nodata(nodata, dtype)
        categorical = all(d.kind in "iub" for d in band_dtypes[-len(outputs.band_names):])
        tags = {"TILECAST_MODEL": str(model_path(self.model.runtime) or type(self.model.runtime).__name__)}
        if self.model.tile_choice is not None:  # what --tile auto chose, and why
            tags["TILECAST_TILE"] = self.model.tile_choice.tag()
        bands = tuple(with_default_colors(b) for b in outputs.bands)  # class maps open coloured in GIS tools
        profile = OutputProfile(self.grid, tuple(names), np.dtype(dtype), nodata, bands, categorical, tags)
        return Job(self.plan, self.source, runtime, spec, self.inputs, outputs, profile, tuple(band_dtypes),
                   self.append_input, mask_receptive_field=spec.mask_receptive_field)

    def run(
        self,
        sink: Sink,
        progress: bool | ProgressCallback | None = None,
        engine: Engine | str | None = None,
        *,
        resume: bool = False,
        chunk_size: int | tuple[int, int] | None = None,
        stats: RunStats | None = None,
        **dask_options: Any,
    ) -> Any:
        """Execute into ``sink`` and return what it returns on close.

        ``engine``: :class:`~tilecast.Local` (threads, streaming; the default) or :class:`~tilecast.Dask` (chunk
        tasks on a Dask cluster; ``"local"`` and ``"dask"`` name their defaults). ``resume`` continues an
        interrupted run of the same prediction into the same output, skipping finished chunks. ``chunk_size`` sets
        the output chunk edge of a chunked run (Dask, ``resume`` or a chunk sink; the local run into a plain sink
        streams tile rows and refuses it). ``stats``: a :class:`~tilecast.runstats.RunStats` that gets the run's
        wall time, its model time (local engine) and its pixels. ``dask_options`` (``workers=``, ``client=``...)
        are deprecated: pass ``engine=tilecast.Dask(...)``.
        """
        if not isinstance(sink, (Sink, ChunkSink)):
            raise SpecError(f"run() takes a Sink (open, write, close, abort), not {sink!r:.80}; write a file with "
                            "to_geotiff(path), to_zarr(path) or to_vector(path)")
        chosen, chunk_size = resolve_engine(engine, self.engine, dask_options), _chunk_size(chunk_size)
        if chunk_size is not None and isinstance(chosen, Local) and not resume and not isinstance(sink, ChunkSink):
            raise SpecError(  # the streaming run below writes tile rows as they finish: it has no chunks to size
                "chunk_size sets the chunks of a chunked run: resume=True, engine=tilecast.Dask(...) or to_zarr(); "
                "this local run streams tile rows into the output and has none. Leave chunk_size out, or pass "
                "resume=True to write (and resume) chunk by chunk"
            )
        if stats is not None:
            stats.pixels = int(self.plan.region.width * self.plan.region.height)
            stats.start()
        try:
            if isinstance(chosen, Dask):  # Dask workers cap their own cache; the client's settings travel to them
                return self._run(sink, progress, chosen, resume, chunk_size, stats)
            with bounded_gdal_cache(self.job):
                return self._run(sink, progress, chosen, resume, chunk_size, stats)
        finally:
            if stats is not None:
                stats.stop()

    def _run(self, sink: Sink, progress: bool | ProgressCallback | None, engine: Engine, resume: bool,
             chunk_size: int | tuple[int, int] | None, stats: RunStats | None = None) -> Any:
        job = self.job
        if stats is not None and isinstance(engine, Local):  # time the model calls where they run: here
            job = dataclasses.replace(job, runtime=TimedRuntime(job.runtime, stats))
        callback = resolve(progress)
        chunked = isinstance(sink, ChunkSink)
        local = isinstance(engine, Local)
        if local and not resume and not chunked:
            from .runners.local import run_local

            try:
                sink.open(job.profile)
                return run_local(job, sink, callback, read_threads=engine.threads, resources=engine.resources)
            except BaseException:
                sink.abort()  # run_local aborts what it started; this covers an open that failed partway
                raise
        if not chunked:
            if resume:
                raise SpecError("resume needs a resumable output (to_geotiff or to_zarr), not a custom sink")
            from .sinks.chunked import BlockSinkAdapter

            sink = BlockSinkAdapter(sink)
        if local:
            from .runners.local import run_local_chunked

            return run_local_chunked(job, sink, callback, resume=resume, chunk_size=chunk_size,
                                     read_threads=engine.threads, resources=engine.resources)
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
        chunk_size: int | tuple[int, int] | None = None,
        stats: RunStats | None = None,
        **dask_options: Any,
    ) -> Path:
        """Stream the prediction into a Cloud-Optimized GeoTIFF at ``path`` (atomically).

        With ``engine=tilecast.Dask(...)`` workers write their chunks into a partial GeoTIFF next to ``path`` and
        one of them builds the COG; with ``resume=True`` (either engine) an interrupted run continues where it
        stopped. ``chunk_size=`` sets the chunk edge of such a run (the plain local run streams tile rows and has no
        chunks: there it is a :class:`~tilecast.errors.SpecError`). ``stats``: see :meth:`run`.
        """
        from .sinks.chunked import PartialGeoTIFFSink
        from .sinks.geotiff import GeoTIFFSink

        _check_path(path, "to_geotiff")
        _check_format(path, "to_geotiff")
        refuse_overwriting_inputs(path, self.source)  # whatever overwrite says, and on every engine
        chosen = resolve_engine(engine, self.engine, dask_options)
        if isinstance(chosen, Dask) or resume:
            sink: Any = PartialGeoTIFFSink(path, overwrite=overwrite, compress=compress, overviews=overviews)
        else:
            sink = GeoTIFFSink(path, overwrite=overwrite, compress=compress, overviews=overviews)
        return self.run(sink, progress, chosen, resume=resume, chunk_size=chunk_size, stats=stats)

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

        _check_path(path, "to_zarr")
        _check_format(path, "to_zarr")
        chosen = resolve_engine(engine, self.engine, dask_options)
        refuse_overwriting_inputs(path, self.source)
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
        are output chunks of whole tiles, ``chunk_size`` output pixels per edge or more (nothing runs until
        computed, on the client current then).
        """
        chosen = resolve_engine(engine, self.engine)
        if chunk_size is not None and not isinstance(chosen, Dask):
            raise SpecError("to_xarray(chunk_size=) sizes the blocks of the lazy Dask-backed array of "
                            "engine=tilecast.Dask(); the local engine computes the whole array in memory. Leave "
                            "chunk_size out, or pass engine='dask'")
        if isinstance(chosen, Dask):
            from .runners.dask import dask_array
            from .sinks.memory import to_dataarray

            _refuse_lazy_progress(progress)
            return to_dataarray(dask_array(self.job, _chunk_size(chunk_size)), self.profile)
        return self.run(ArraySink(), progress, chosen)

    def to_numpy(self, progress: bool | ProgressCallback | None = None) -> np.ndarray:
        """The pixels of :meth:`to_xarray` as a plain ``(band, y, x)`` array, without needing xarray."""
        if isinstance(self.engine, Dask):
            from .runners.dask import dask_array

            _refuse_lazy_progress(progress)
            return np.asarray(dask_array(self.job))
        return self.run(_NumpySink(), progress, self.engine)

    def to_vector(self, path: str | os.PathLike, **options: Any) -> Path:
        """Objects (a detector) or regions (a class map) streamed to a vector file; see
        :func:`tilecast.vectors.predict_vectors`."""
        from .vectors import predict_vectors

        _check_path(path, "to_vector")
        _check_format(path, "to_vector")
        return predict_vectors(self, path, **options)

    def to_geodataframe(self, **options: Any) -> Any:
        """Objects or regions as a GeoDataFrame in memory (small areas); see
        :func:`tilecast.vectors.to_geodataframe`."""
        from .vectors import to_geodataframe

        return to_geodataframe(self, **options)

    def explore(self, **options: Any) -> Any:
        """An interactive map of this prediction (Jupyter), computed block by block as you pan; see
        :func:`tilecast.view.explore`."""
        from .view import explore

        return explore(self, **options)

    def _repr_html_(self) -> str:
        """Jupyter's view: the output grid, the tile plan and the bands it will write, before anything runs."""
        import html

        from .card.html import section, table

        h, w = self.plan.output_shape
        g = self.grid
        grid = [("size", f"{w} × {h} px"), ("CRS", g.crs.to_string() if g.crs else "none"),
                ("pixel size", " × ".join(f"{abs(v):g}" for v in g.resolution)),
                ("bounds", ", ".join(f"{v:.6g}" for v in g.bounds)), ("tiles", len(self.plan)),
                ("engine", type(self.engine).__name__)]
        parts = [f"<b>tilecast.Prediction</b> <code>{html.escape(repr(self.source))}</code>",
                 section("Output grid", table(["", ""], grid))]
        if self._job is not None:
            p = self._job.profile
            parts.append(section("Bands", table(["name", "dtype", "nodata"],
                                                [(n, str(p.dtype), p.nodata) for n in p.band_names])))
        return '<div style="font-size:90%">' + "".join(parts) + "<i>nothing computed yet: write it with "\
            "to_geotiff(), to_xarray(), to_vector() or explore()</i></div>"

    def __repr__(self) -> str:
        h, w = self.plan.output_shape
        return f"<Prediction {len(self.plan)} tiles -> {w} x {h} px, source={self.source!r}>"
