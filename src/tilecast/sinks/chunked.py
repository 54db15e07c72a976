"""Sinks that take whole output chunks in any order, from any process, and can resume an interrupted run.

Each keeps a partial output next to the final path (``.NAME.partial.tmp.tif`` or ``.NAME.partial.zarr``) and a small
manifest (``.NAME.resume.json``) listing the finished chunks. Workers write their chunk straight into the partial
output (GeoTIFF: windowed writes under a file lock; Zarr: one chunk per task, no lock), so pixels never pass through
the client. The final path appears only when every chunk is done: the partial GeoTIFF becomes a COG, the partial
Zarr store is renamed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from .._extras import require
from .base import ChunkSink, ChunkWriter, OutputProfile, Sink
from .geotiff import GeoTIFFSink, check_free_space, check_output_path, run_interruptibly, writing_errors
from .overviews import chunk_alignable, derive_levels, level_profile, write_chunk_level
from .write_errors import never_raising

__all__ = [
    "BlockSinkAdapter", "ChunkSink", "ChunkWriter", "Manifest", "PartialGeoTIFFSink", "ZarrSink", "chunk_window",
    "pixels_checksum",
]


class Manifest:
    """A JSON list of finished chunks with a checksum of each, rewritten atomically at most every ``every`` seconds.

    The checksum is of the chunk's pixels as read back from the partial output when the chunk is recorded, so a
    resumed run trusts a chunk only if the file still holds exactly those pixels (see :meth:`verify`).
    """

    def __init__(self, path: Path, fingerprint: str, every: float = 0.5) -> None:
        self.path, self.fingerprint, self.every = path, fingerprint, every
        self.done: set[int] = set()
        self.sums: dict[int, str] = {}
        self._last = 0.0

    def load(self) -> bool:
        """Adopt the recorded chunks if the manifest belongs to the same run; False otherwise. Chunks recorded
        without a checksum (by an older tilecast) are not adopted: nothing says they are intact."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(data, dict) or data.get("fingerprint") != self.fingerprint:
            return False
        sums = data.get("sums") or {}
        try:
            self.sums = {int(k): str(v) for k, v in sums.items()}
            self.done = {int(i) for i in data.get("done", []) if int(i) in self.sums}
        except (TypeError, ValueError, AttributeError):
            self.done, self.sums = set(), {}
            return False
        return True

    def add(self, indices: Iterable[int], sums: dict[int, str] | None = None) -> None:
        self.done.update(indices)
        self.sums.update(sums or {})
        if time.monotonic() - self._last >= self.every:
            self.flush()

    def verify(self, checksum: Callable[[int], str | None]) -> set[int]:
        """Keep only the chunks whose pixels still have their recorded checksum; returns the ones dropped."""
        bad = {i for i in self.done if checksum(i) != self.sums.get(i)}
        self.done -= bad
        for i in bad:
            self.sums.pop(i, None)
        return bad

    def flush(self) -> None:
        """Write the manifest now; a resumable :class:`~tilecast.errors.OutputError` when it cannot be written."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        sums = {str(i): self.sums[i] for i in sorted(self.done) if i in self.sums}
        with writing_errors(self.path, "record the finished chunks in", resumable=True):
            tmp.write_text(json.dumps({"version": 2, "fingerprint": self.fingerprint, "done": sorted(self.done),
                                       "sums": sums}))
            os.replace(tmp, self.path)
        self._last = time.monotonic()

    def remove(self) -> None:
        for p in (self.path, self.path.with_name(self.path.name + ".tmp")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def pixels_checksum(data: np.ndarray) -> str:
    """A checksum of a chunk's pixels, their shape and dtype."""
    head = f"{data.dtype.str}{data.shape}".encode()
    return f"{zlib.crc32(np.ascontiguousarray(data).data, zlib.crc32(head)):08x}"


def chunk_window(index: int, chunks: tuple[int, int], shape: tuple[int, int]) -> Window:
    """The output window of chunk ``index`` (row-major) for chunks of ``chunks`` pixels on ``shape``."""
    (ch, cw), (h, w) = chunks, shape
    i, j = divmod(index, math.ceil(w / cw))
    r0, c0 = i * ch, j * cw
    return Window(c0, r0, min(w, c0 + cw) - c0, min(h, r0 + ch) - r0)


def _hidden(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{suffix}")


class _LockedGTiffWriter:
    """Windowed writes into the shared partial GeoTIFF, one process at a time (an OS file lock, released even
    when a worker is killed). With ``levels`` (resampling, nodata) each chunk is also reduced into the first
    overview level beside it (``<partial>.ovr``), so the COG conversion only derives the small levels."""

    def __init__(self, path: str, lock: str, levels: tuple[str, float | None] | None = None,
                 output: str | None = None) -> None:
        self.path, self.lock, self.levels = path, lock, levels
        self.output = output or path  # the final path, which a failed write names

    def write(self, window: Window, data: np.ndarray) -> None:
        # The sink created the lock when it prepared the partial; never create it here: a cancelled task that still
        # runs after an abort removed it must fail, not leave a new lock behind.
        with writing_errors(Path(self.output), "write a chunk into the partial file of", resumable=True), \
                open(self.lock, "r+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                with rasterio.open(self.path, "r+") as dst:
                    dst.write(data, window=window)
                if self.levels is not None:
                    with rasterio.open(self.path + ".ovr", "r+") as level:
                        write_chunk_level(level, window, data, *self.levels)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


class _Unreadable(Exception):
    """A finished chunk that the partial output cannot give back."""


class _WorkerWritten:
    """A chunk sink whose chunks go through its own picklable :meth:`writer`, here or on a worker, and whose finished
    chunks are recorded in ``self.manifest``."""

    manifest: Manifest | None
    profile: OutputProfile
    chunks: tuple[int, int]

    def writer(self) -> ChunkWriter:
        raise NotImplementedError

    def write(self, window: Window, data: np.ndarray) -> None:
        self.writer().write(window, data)

    def read_back(self, window: Window) -> np.ndarray:
        """The pixels the partial output holds in ``window`` (raises on a damaged partial)."""
        raise NotImplementedError

    def checksum(self, index: int) -> str | None:
        """The checksum of chunk ``index`` as the partial output holds it; None when it cannot be read."""
        window = chunk_window(index, self.chunks, self.profile.grid.shape)
        try:
            return pixels_checksum(self.read_back(window))
        except Exception:  # any failure to read it back means the chunk is not trusted
            return None

    def _verified(self, index: int) -> str:
        """:meth:`checksum`, raising :class:`_Unreadable` when the partial cannot be read there."""
        value = self.checksum(index)
        if value is None:
            raise _Unreadable(index)
        return value

    def mark(self, indices: Iterable[int]) -> None:
        indices = list(indices)
        self.manifest.add(indices, {i: s for i in indices if (s := self.checksum(i)) is not None})

    def _resumable(self) -> set[int] | None:
        """With a manifest of this run, the finished chunks that are still intact (the others are recomputed);
        None when the partial output cannot be used at all."""
        if not self.manifest.load():
            return None
        # A chunk whose pixels changed is recomputed; one GDAL cannot read means the file itself is damaged
        # (truncated, zero bytes): GDAL could not write into it either, so everything starts over.
        try:
            self.read_back(Window(0, 0, 1, 1))
            self.manifest.verify(self._verified)
        except Exception:  # a zero-byte or mangled partial
            self.manifest.done.clear()
            self.manifest.sums.clear()
            return None
        self.manifest.flush()
        return set(self.manifest.done)

    def checkpoint(self) -> None:
        """Write the record of finished chunks now (see :class:`~tilecast.sinks.base.Checkpointed`)."""
        if self.manifest is not None:
            self.manifest.flush()


class PartialGeoTIFFSink(_WorkerWritten, GeoTIFFSink):
    """A COG written chunk by chunk (by workers), resumable. Same options and final file as :class:`GeoTIFFSink`.

    The partial file is an uncompressed, sparse, tiled GeoTIFF so that any window can be rewritten in place; it
    must live where every worker can write (the output folder), and the COG is built from it at the end.
    """
    temp_is_resumable = True

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, **kwargs: Any) -> None:
        super().__init__(path, overwrite=overwrite, **kwargs)
        self.partial = _hidden(self.path, "partial.tmp.tif")
        self.lock = str(_hidden(self.path, "partial.lock"))
        self.manifest: Manifest | None = None
        self._levels: tuple[str, list[int]] | None = None

    def prepare(self, profile: OutputProfile, fingerprint: str, chunks: tuple[int, int], resume: bool) -> set[int]:
        self.profile, self.chunks = profile, tuple(chunks)
        self.manifest = Manifest(_hidden(self.path, "resume.json"), fingerprint)
        plan = self._overview_plan(profile)
        level = str(self.partial) + ".ovr"
        if resume and self.partial.exists():
            self._tmp = str(self.partial)
            self._levels = plan if plan is not None and os.path.exists(level) else None
            done = self._resumable()
            if done is not None:
                Path(self.lock).touch()  # the writers' lock (see _LockedGTiffWriter.write)
                return done
        self._remove_partial()
        g = profile.grid
        check_free_space(self.path.parent, g.shape[0] * g.shape[1] * len(profile.band_names)
                         * np.dtype(profile.dtype).itemsize)  # the partial file is uncompressed
        try:
            with writing_errors(self.path, "create the partial file for"):
                self._create(profile, chunks, plan, level)
        except BaseException:  # the runners abort only a prepared sink: remove what a half-made one created
            self._abort(keep=False)
            raise
        return set()

    def _create(self, profile: OutputProfile, chunks: tuple[int, int], plan: tuple[str, list[int]] | None,
                level: str) -> None:
        """A fresh partial file, its streamed overview level when the chunks allow one, the lock and the manifest."""
        g = profile.grid
        block = 256 if min(g.shape) >= 256 else 16
        partial = dict(
            driver="GTiff", width=g.shape[1], height=g.shape[0], count=len(profile.band_names),
            dtype=profile.dtype, crs=g.crs, transform=g.transform, nodata=profile.nodata, tiled=True,
            blockxsize=block, blockysize=block, sparse_ok=True, bigtiff="IF_SAFER",
            interleave="band" if len(profile.band_names) > 1 else "pixel",
        )
        self._dst = rasterio.open(self.partial, "w", **partial)
        self._write_metadata(profile)
        self._dst.close()
        self._dst = None
        self._levels = plan if plan is not None and chunk_alignable(chunks, g.shape) else None
        if self._levels is not None:
            with rasterio.open(level, "w", **level_profile(partial)):
                pass
        self._tmp = str(self.partial)
        Path(self.lock).touch()  # the writers' lock (see _LockedGTiffWriter.write)
        self.manifest.flush()

    def writer(self) -> ChunkWriter:
        levels = None if self._levels is None else (self._levels[0], self.profile.nodata)
        return _LockedGTiffWriter(str(self.partial), self.lock, levels, str(self.path))

    def read_back(self, window: Window) -> np.ndarray:
        """The partial's pixels in ``window`` and, when the first overview level is streamed, that level's pixels
        under it (a damaged level would otherwise end up in the COG)."""
        with open(self.lock, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                with rasterio.open(self.partial) as src:
                    data = src.read(window=window)
                if self._levels is None:
                    return data
                r, c = int(window.row_off) // 2, int(window.col_off) // 2
                lw = Window(c, r, (int(window.col_off + window.width) + 1) // 2 - c,
                            (int(window.row_off + window.height) + 1) // 2 - r)
                with rasterio.open(str(self.partial) + ".ovr") as src:
                    level = src.read(window=lw)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return np.concatenate([data.reshape(-1).view(np.uint8), level.reshape(-1).view(np.uint8)])

    def close(self) -> Path:
        """Build the COG from the partial file (wherever this runs: a worker can do it) and publish it."""
        check_output_path(self.path, self.overwrite)
        self._tmp = str(self.partial)
        level = self._tmp + ".ovr"
        if self._levels is not None:
            levels = self._levels
            run_interruptibly(lambda: derive_levels(level, *levels), "tilecast-overviews")
        elif os.path.exists(level):  # never let GDAL pick up a level this run did not fill
            os.remove(level)
        self._dst = rasterio.open(self.partial, "r")
        path = super().close()  # closes the handle, copies to a COG, renames, removes the partial file
        self.manifest.remove()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.lock)
        return path

    def abort(self, keep: bool = False) -> None:
        """Keep the partial output for ``resume=True`` (record the finished chunks) or remove it; never raises
        (see :func:`~tilecast.sinks.write_errors.never_raising`)."""
        never_raising(keep, lambda: self._abort(keep))

    def _abort(self, keep: bool) -> None:
        if keep and self.manifest is not None:
            self.manifest.flush()
            return
        if self._dst is not None:
            with contextlib.suppress(Exception):
                self._dst.close()
            self._dst = None
        self._remove_partial()

    def _remove_partial(self) -> None:
        for p in (str(self.partial), str(self.partial) + ".aux.xml", str(self.partial) + ".ovr", self.lock,
                  str(_hidden(self.path, "partial.cog.tif"))):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)
        if self.manifest is not None:
            self.manifest.remove()


class _ZarrWriter:
    def __init__(self, path: str, name: str, output: str | None = None) -> None:
        self.path, self.name, self.output = path, name, output or path  # output: the final path, for errors

    def write(self, window: Window, data: np.ndarray) -> None:
        zarr = require("zarr", "dask")
        with writing_errors(Path(self.output), "write a chunk into the partial store of", resumable=True):
            arr = zarr.open_array(os.path.join(self.path, self.name), mode="r+")
            r, c = int(window.row_off), int(window.col_off)
            arr[:, r : r + data.shape[1], c : c + data.shape[2]] = data


class ZarrSink(_WorkerWritten):
    """A Zarr store (``band, y, x``) that xarray, rioxarray and odc-geo open georeferenced; one chunk per task."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, name: str = "prediction") -> None:
        self.path = check_output_path(path, overwrite)
        self.overwrite = overwrite
        self.name = name
        self.partial = _hidden(self.path, "partial.zarr")
        self.manifest: Manifest | None = None

    def prepare(self, profile: OutputProfile, fingerprint: str, chunks: tuple[int, int], resume: bool) -> set[int]:
        self.profile, self.chunks = profile, tuple(chunks)
        self.manifest = Manifest(_hidden(self.path, "resume.json"), fingerprint)
        if resume and self.partial.exists():
            done = self._resumable()
            if done is not None:
                return done
        shutil.rmtree(self.partial, ignore_errors=True)
        da = require("dask.array", "dask")
        from .memory import to_dataarray

        h, w = profile.grid.shape
        n = len(profile.band_names)
        fill = profile.nodata if profile.nodata is not None else 0
        template = da.full((n, h, w), fill, dtype=profile.dtype, chunks=(n, chunks[0], chunks[1]))
        arr = to_dataarray(template, profile)
        encoding: dict[str, Any] = {"chunks": (n, chunks[0], chunks[1])}
        if profile.nodata is not None:
            arr.attrs.pop("_FillValue", None)
            encoding["_FillValue"] = profile.nodata
        arr.attrs["long_name"] = ",".join(profile.band_names)
        arr.attrs["grid_mapping"] = "spatial_ref"  # CF: rioxarray/odc-geo find the CRS through it
        arr.encoding.pop("grid_mapping", None)
        ds = arr.to_dataset(name=self.name)
        ds.attrs.update({k: (v if isinstance(v, (str, int, float)) else json.dumps(v))
                         for k, v in profile.tags.items()})
        ds.to_zarr(self.partial, mode="w", compute=False, encoding={self.name: encoding}, consolidated=True,
                  zarr_format=2)
        self.manifest.flush()
        return set()

    def writer(self) -> ChunkWriter:
        return _ZarrWriter(str(self.partial), self.name, str(self.path))

    def read_back(self, window: Window) -> np.ndarray:
        zarr = require("zarr", "dask")
        arr = zarr.open_array(os.path.join(self.partial, self.name), mode="r")
        r, c = int(window.row_off), int(window.col_off)
        return np.asarray(arr[:, r : r + int(window.height), c : c + int(window.width)])

    def close(self) -> Path:
        check_output_path(self.path, self.overwrite)
        if self.path.exists():
            shutil.rmtree(self.path) if self.path.is_dir() else self.path.unlink()
        os.replace(self.partial, self.path)
        self.manifest.remove()
        return self.path

    def abort(self, keep: bool = False) -> None:
        """As :meth:`PartialGeoTIFFSink.abort`: keep or remove the partial store; never raises."""
        never_raising(keep, lambda: self._abort(keep))

    def _abort(self, keep: bool) -> None:
        if keep and self.manifest is not None:
            self.manifest.flush()
            return
        shutil.rmtree(self.partial, ignore_errors=True)
        if self.manifest is not None:
            self.manifest.remove()


class BlockSinkAdapter:
    """Any plain :class:`~tilecast.sinks.base.Sink` behind the chunk interface: pixels come back to the caller,
    which writes each chunk as it arrives (not resumable)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    @property
    def path(self) -> Any:
        """Where the wrapped sink publishes (None if nowhere): the runners refuse one of the inputs."""
        return getattr(self.sink, "path", None)

    def prepare(self, profile: OutputProfile, fingerprint: str, chunks: tuple[int, int], resume: bool) -> set[int]:
        self.sink.open(profile)
        return set()

    def writer(self) -> None:
        return None

    def write(self, window: Window, data: np.ndarray) -> None:
        self.sink.write(window, data)

    def mark(self, indices: Iterable[int]) -> None:
        pass

    def close(self) -> Any:
        return self.sink.close()

    def abort(self, keep: bool = False) -> None:
        self.sink.abort()
