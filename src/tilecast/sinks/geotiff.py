"""Cloud-Optimized GeoTIFF output: stream into a tiled temporary GeoTIFF, then build the COG and rename.

The first overview level is reduced while the strips stream (:mod:`tilecast.sinks.overviews`), so the conversion
after the last tile only derives the small levels and compresses.

Nothing appears at the output path until the COG is complete, and an existing file is only replaced with
``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError
from rasterio.windows import Window

from ..errors import OutputError, OutputExistsError, TilecastError
from ..parallel import SERIAL, Spans
from ..resources import Resources, one_pass_gdal_cache
from .base import BaseSink, OutputProfile
from .overviews import OverviewWriter, overview_factors
from .safety import check_compression
from .write_errors import is_gdal_error

__all__ = [
    "RESUME_STATE", "TEMP_GTIFF_OPTIONS", "GeoTIFFSink", "check_free_space", "check_output_path", "clear_resume_state",
    "cog_options", "copy_to_cog", "remove_stale_temps", "run_interruptibly", "temp_prefix", "writing_errors",
]


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """Fail early, before any work, if the output exists or its folder is missing."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputExistsError(f"{p} already exists; pass overwrite=True (--overwrite) to replace it")
    if not p.parent.exists():
        raise OutputError(f"the output folder {p.parent} does not exist; create it first")
    return p


TEMP_GTIFF_OPTIONS: dict[str, object] = {
    "driver": "GTiff", "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "NONE", "bigtiff": "IF_SAFER",
}
"""The streaming temporary file: uncompressed, because it is written once and read once, and copying bytes costs
less than compressing them (ZSTD level 1 took about a twentieth of an almost-free model's run, for a slightly
faster COG conversion than none). It needs the uncompressed size on disk while the run lasts (checked first)."""

_OVERVIEW_OPTIONS = ("overviews", "overview_count", "overview_resampling", "resampling", "overview_compress")
"""Creation options that change the overviews: with any of them GDAL builds the overviews itself."""


def cog_options(
    shape: tuple[int, int], compress: str = "DEFLATE", blocksize: int = 512, overviews: bool = True,
    categorical: bool = False,
) -> dict[str, str]:
    """GDAL COG driver options for the final file.

    Level 1 compression: the conversion runs after the last tile, so it is pure waiting time, and level 1 makes it
    much faster than the default for a slightly larger file (``docs/benchmarks.md``). Pass ``creation_options`` to
    trade the other way.
    """
    options = {
        "driver": "COG", "compress": compress, "blocksize": str(blocksize), "bigtiff": "IF_SAFER",
        # The resource policy's cog_threads: one more than the CPUs, so the compressing threads stay busy while the
        # calling thread reads and writes.
        "num_threads": str(Resources.detect().cog_threads), "overviews": "AUTO" if overviews else "NONE",
        "overview_resampling": "NEAREST" if categorical else "AVERAGE",
    }
    if overviews and 1 < max(shape) <= blocksize:
        # GDAL's AUTO stops once a level fits one block, so a one-block raster would get no overview.
        options["overview_count"] = "1"
    if compress.upper() in ("DEFLATE", "ZSTD", "LZW"):
        options["predictor"] = "YES"
    if compress.upper() in ("DEFLATE", "ZSTD"):
        options["level"] = "1"
    return options


def copy_to_cog(src: str, dst: str, options: dict[str, str]) -> None:
    """GDAL's COG driver, with the resource policy's one-pass block cache: it reads each block of the temporary file
    once, so a larger cache (such as the run's, sized for overlapping reads) only holds memory. Reading the temporary
    file through memory maps (``GTIFF_VIRTUAL_MEM_IO``) would save a little CPU but counts the whole mapped file as
    resident memory, so it is not used."""
    with one_pass_gdal_cache():
        rasterio.shutil.copy(src, dst, **options)


class GeoTIFFSink(BaseSink):
    """Writes a COG with overviews, nodata, band descriptions, and class names and colours when given."""

    finishing = "building the Cloud-Optimized GeoTIFF (overviews, compression)"
    """What :meth:`close` does, for the progress report after the last tile."""

    block_rows = 256
    temp_is_resumable = False
    """Whether the temporary file is a resumable run's partial output: a failed COG build then leaves it to
    :meth:`abort`, which keeps it for ``resume=True`` (the finished chunks are not computed again)."""

    def __init__(
        self,
        path: str | os.PathLike,
        overwrite: bool = False,
        compress: str = "DEFLATE",
        blocksize: int = 512,
        overviews: bool = True,
        creation_options: dict[str, str] | None = None,
    ) -> None:
        self.path = check_output_path(path, overwrite)
        self.overwrite = overwrite
        self.compress = check_compression(compress)
        self.blocksize = blocksize
        self.overviews = overviews
        self.creation_options = creation_options or {}
        self._tmp: str | None = None
        self._dst = None
        self._ovr: OverviewWriter | None = None
        self._spans: Spans = SERIAL

    def open(self, profile: OutputProfile) -> None:
        try:
            with writing_errors(self.path, "create the temporary file for"):
                self._open(profile)
        except BaseException:  # runners abort only an opened sink: remove what a half-made one created
            self.abort()
            raise

    def _open(self, profile: OutputProfile) -> None:
        self.profile = profile
        g = profile.grid
        # A free name, not a file: GDAL truncating a file that exists makes ext4 write all of it back when it is
        # closed (its replace-by-truncate safeguard), 20-90 ms after the last tile for a 150 MB temporary file.
        remove_stale_temps(self.path)
        if self.overwrite:
            clear_resume_state(self.path)
        fd, self._tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=".tmp.tif", dir=self.path.parent)
        os.close(fd)
        os.remove(self._tmp)
        # Sparse: an aborted run closes the file without GDAL writing every block not written yet (at 100000 x
        # 100000 that was gigabytes after Ctrl-C). Blocks a finished run wrote read back the same either way.
        threads = Resources.detect().writer_threads
        options = {**TEMP_GTIFF_OPTIONS, "blockysize": self.block_rows, "sparse_ok": True}
        check_free_space(self.path.parent, g.shape[0] * g.shape[1] * len(profile.band_names)
                         * np.dtype(profile.dtype).itemsize)
        tmp_profile = dict(
            options, width=g.shape[1], height=g.shape[0], count=len(profile.band_names), dtype=profile.dtype,
            crs=g.crs, transform=g.transform, nodata=profile.nodata,
            interleave="band" if len(profile.band_names) > 1 else "pixel",
        )
        self._dst = rasterio.open(self._tmp, "w", **tmp_profile)
        self._write_metadata(profile)
        levels = self._overview_plan(profile)
        if levels is not None:
            resampling, factors = levels
            self._spans = Spans(threads, "tilecast-overview")
            self._ovr = OverviewWriter(self._tmp + ".ovr", tmp_profile, resampling, profile.nodata, factors,
                                       self._spans)

    def _overview_plan(self, profile: OutputProfile) -> tuple[str, list[int]] | None:
        """``(resampling, factors)`` when tilecast reduces the first overview level itself; None leaves the
        overviews to GDAL (no overviews, or creation options that change them)."""
        factors = overview_factors(profile.grid.shape, self.blocksize) if self.overviews else []
        if not factors or any(k.lower() in _OVERVIEW_OPTIONS for k in self.creation_options):
            return None
        return ("nearest" if profile.categorical else "average"), factors

    def _write_metadata(self, profile: OutputProfile) -> None:
        """Band descriptions, dataset tags and class metadata, which the COG conversion carries over."""
        for i, name in enumerate(profile.band_names, start=1):
            self._dst.set_band_description(i, name)
        tags = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in profile.tags.items()}
        if tags:
            self._dst.update_tags(**tags)
        self._write_classes(profile)

    def _write_classes(self, profile: OutputProfile) -> None:
        """Class names as a ``{value: name}`` JSON tag per band; colours as the GDAL colour table (first band)."""
        idx = 1
        for band in profile.bands:
            if band.dimensions:
                break
            if band.classes:
                self._dst.update_tags(idx, class_names=json.dumps({str(v): n for v, n in band.classes}))
            if band.colors and idx == 1 and profile.dtype in (np.uint8, np.uint16):
                self._dst.write_colormap(idx, {v: tuple(c) for v, c in band.colors})
            idx += 1

    def write(self, window: Window, data: np.ndarray) -> None:
        with writing_errors(self.path, "write"):
            self._dst.write(data, window=window)
            if self._ovr is not None:
                self._ovr.write(window, data)

    def close(self) -> Path:
        with writing_errors(self.path, "finish the temporary file for"):  # GDAL flushes its last blocks here
            self._dst.close()
        self._dst = None
        self._spans.close()
        ovr, self._ovr = self._ovr, None
        tmp, final_tmp = self._tmp, self._tmp.replace(".tmp.tif", ".cog.tif")
        options = cog_options(self.profile.grid.shape, self.compress, self.blocksize, self.overviews,
                              self.profile.categorical)
        options.update(self.creation_options)
        publish = threading.Lock()
        stopped = threading.Event()

        def convert() -> None:
            if ovr is not None and not ovr.finish():
                _remove(tmp + ".ovr")  # not streamed in order: GDAL builds the overviews
            copy_to_cog(tmp, final_tmp, options)
            with publish:
                if stopped.is_set():
                    _remove(final_tmp)
                else:
                    os.replace(final_tmp, self.path)
                    write_categories(self.path, self.profile)
                    if not self.temp_is_resumable:  # a stopped resumable run's partial state is stale now
                        clear_resume_state(self.path)

        keep = False
        try:
            with writing_errors(self.path, "build the Cloud-Optimized GeoTIFF"):
                run_interruptibly(convert, "tilecast-cog")
        except BaseException as exc:
            with publish:
                stopped.set()
            _remove(final_tmp)
            keep = self.temp_is_resumable
            if keep and isinstance(exc, TilecastError):
                exc.resumable = True  # a full disk: free space, and resume=True only builds the COG again
            raise
        finally:
            if not keep:  # otherwise abort(keep=...) decides
                _remove(tmp)
                _remove(tmp + ".ovr")
            self._tmp = None
        return self.path

    def abort(self) -> None:
        if self._tmp:  # removed first: what closing still flushes goes to a file nobody can see
            _remove(self._tmp)
            _remove(self._tmp + ".ovr")
        if self._dst is not None:
            with contextlib.suppress(Exception):
                self._dst.close()
            self._dst = None
        if self._ovr is not None:
            with contextlib.suppress(Exception):
                self._ovr.abort()
            self._ovr = None
        self._spans.close()
        if self._tmp:
            _remove(self._tmp)
            _remove(self._tmp + ".ovr")
            _remove(self._tmp.replace(".tmp.tif", ".cog.tif"))
            self._tmp = None


def check_free_space(folder: Path, nbytes: int) -> None:
    """Refuse, before any work, an uncompressed temporary file larger than the free space in ``folder``: the check
    GDAL makes when it creates one, which a sparse file skips. ``CHECK_DISK_FREE_SPACE=FALSE`` turns it off, as
    for GDAL."""
    if os.environ.get("CHECK_DISK_FREE_SPACE", "").upper() in ("FALSE", "NO", "OFF", "0"):
        return
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if nbytes > free:
        raise OutputError(
            f"not enough free disk space in {folder} for the output: it needs about {nbytes / 2**30:,.1f} GiB "
            f"while it is written, and {free / 2**30:,.1f} GiB are free; free some space, predict a smaller region "
            "(--bounds), or write the output to another disk (-o)"
        )


@contextlib.contextmanager
def writing_errors(path: Path, doing: str, resumable: bool = False) -> Iterator[None]:
    """GDAL's and the OS's write errors (a read-only folder, a full disk, GDAL's free-space check, rasterio's
    ``TypeError`` for a missing file opened ``"r+"``) as one :class:`~tilecast.errors.OutputError` that names the
    output and the fix, instead of a library traceback.

    ``resumable``: the write goes into a resumable output's partial files. Nothing in the run is wrong, so the error
    is marked ``resumable`` (the runners keep the partial output and manifest) and says to run again with
    ``resume=True``, which does not recompute the finished chunks.
    """
    try:
        yield
    except TilecastError:
        raise
    except (RasterioError, CPLE_BaseError, OSError, TypeError) as exc:
        if isinstance(exc, TypeError) and not is_gdal_error(exc):
            raise
        text = str(exc).strip() or type(exc).__name__
        then = (", then run again with resume=True (--resume) to continue from the chunks already written"
                if resumable else "")
        error = OutputError(
            f"cannot {doing} {path}: {text}. Check that {path.parent} exists, is writable and has room for the output "
            "(about the uncompressed size of the raster, twice over while the COG is built; free some space), or "
            f"choose another output folder or a smaller region{then}"
        )
        error.resumable = resumable
        raise error from None


def run_interruptibly(work: Callable[[], None], name: str) -> None:
    """Run ``work`` (a long GDAL call, such as the COG conversion) on a daemon thread and wait for it in short
    steps: Ctrl-C and SIGTERM reach the calling thread within a fraction of a second instead of after GDAL returns.
    ``work`` must check, before publishing anything, that the caller has not given up."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # re-raised on the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.05)
    if errors:
        raise errors[0]


def temp_prefix(path: Path) -> str:
    """The start of a temporary file's name next to ``path``: it names this host and process, so that a later run
    can tell a killed run's leftovers (:func:`remove_stale_temps`) from a running one's."""
    return f".{path.name}.tilecast-{_HOST}-{os.getpid()}-"


_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files that a killed run for ``path`` left behind: only those that this host's process,
    named in the file name, no longer runs. Returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tilecast-{_HOST}-(\d+)-")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = pattern.match(entry.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    os.remove(entry.path)
                    removed.append(Path(entry.path))
    return removed


RESUME_STATE = ("partial.tmp.tif", "partial.tmp.tif.aux.xml", "partial.tmp.tif.ovr", "partial.cog.tif",
                "partial.lock", "resume.json", "resume.json.tmp")
"""What a resumable run of ``NAME`` keeps next to it, as ``.NAME.<suffix>`` (see :mod:`tilecast.sinks.chunked`)."""


def clear_resume_state(path: Path) -> None:
    """Remove what an interrupted resumable GeoTIFF run left for ``path``: a run that replaces the output
    (``overwrite``) without resuming makes it stale."""
    for suffix in RESUME_STATE:
        with contextlib.suppress(OSError):
            os.remove(path.with_name(f".{path.name}.{suffix}"))


def _remove(path: str | None) -> None:
    if path:
        for p in (path, path + ".aux.xml"):
            with contextlib.suppress(FileNotFoundError):
                os.remove(p)


def write_categories(path: str | os.PathLike, profile: OutputProfile) -> None:
    """Class names as GDAL category names, in the ``.aux.xml`` sidecar GDAL and QGIS read (GeoTIFF has no tag for
    them); a stale sidecar from an earlier output is removed."""
    from ..spec import categories_xml

    side = Path(f"{path}.aux.xml")
    xml = categories_xml(profile.bands)
    if xml is None:
        side.unlink(missing_ok=True)
        return
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(xml)
    os.replace(tmp, side)
