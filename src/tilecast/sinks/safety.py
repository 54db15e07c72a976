"""Never let an output replace one of its own inputs, whatever ``overwrite`` says.

``tilecast predict x.tif -o x.tif --overwrite`` (or ``-o dir/../x.tif``, a hard link, a symlink) would otherwise
replace the input with the prediction. The check compares files, not spellings: :func:`os.path.samefile` for an
output that exists, and resolved paths for one that does not yet. Inputs are every file a source declares
(:func:`~tilecast.sources.base.source_paths`: mosaic members, STAC assets) and, for GDAL containers such as VRTs,
every file GDAL reads through them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import OutputIsInputError, OutputOptionError
from ..sources.base import source_paths

__all__ = ["OutputIsInputError", "OutputOptionError", "check_compression", "input_files", "refuse_overwriting_inputs"]

_REMOTE = ("/vsicurl", "http://", "https://", "s3://", "gs://", "az://", "/vsis3", "/vsigs", "/vsiaz")


def check_compression(name: str) -> str:
    """``name`` if GDAL writes GeoTIFFs with it; else :class:`OutputOptionError` (GDAL would silently write the file
    uncompressed)."""
    from rasterio.enums import Compression

    from .._gdal import compression_supported

    if not isinstance(name, str) or not compression_supported(name):
        usable = sorted(c.name.upper() for c in Compression if compression_supported(c.name))
        raise OutputOptionError(
            f"unknown or unsupported compression {name!r}; use one of {', '.join(usable)} (--compress)"
        )
    return name


def _local(path: str) -> str | None:
    """The local file behind ``path``, or None for URLs, in-memory datasets and GDAL connection strings."""
    text = str(path)
    if not text or text.startswith(_REMOTE):
        return None
    if text.startswith("/vsizip/") or text.startswith("/vsigzip/") or text.startswith("/vsitar/"):
        text = text.split("/", 2)[2]
        text = "/" + text if not text.startswith("/") else text
        for ext in (".zip", ".gz", ".tar", ".tgz"):
            if ext in text:
                return text[: text.index(ext) + len(ext)]
        return None
    return text


def _gdal_files(path: str, seen: set[str], depth: int = 0) -> list[str]:
    """Every file GDAL reads for ``path`` (a VRT's members, recursively; a GeoTIFF's .ovr/.msk side files)."""
    import rasterio
    from rasterio.errors import RasterioError

    if depth > 8 or path in seen:
        return []
    seen.add(path)
    try:
        with rasterio.Env(CPL_DEBUG=False), rasterio.open(path) as ds:
            files = [str(f) for f in (ds.files or [])]
    except (RasterioError, OSError, ValueError):
        return []
    out = []
    for f in files:
        out.append(f)
        if f != path and _is_vrt(f):
            out.extend(_gdal_files(f, seen, depth + 1))
    return out


def _is_vrt(path: str) -> bool:
    """A GDAL VRT (by its first bytes, whatever its name): only containers are opened to list their members."""
    try:
        with open(path, "rb") as fh:
            return b"<VRTDataset" in fh.read(256)
    except OSError:
        return False


def input_files(inputs: Iterable[object]) -> list[str]:
    """The local files behind ``inputs`` (sources, paths, or lists of either), VRT members included."""
    paths: list[str] = []
    for item in inputs:
        if item is None:
            continue
        if isinstance(item, (str, os.PathLike)):
            paths.append(os.fspath(item))
        elif isinstance(item, (list, tuple, set)):
            paths.extend(input_files(item))
        else:
            paths.extend(source_paths(item))
    files: list[str] = []
    seen: set[str] = set()
    for p in paths:
        local = _local(p)
        if local is None:
            continue
        files.append(local)
        if _is_vrt(local):
            files.extend(f for f in _gdal_files(local, seen) if _local(f))
    return files


def _same(output: Path, candidate: str) -> bool:
    try:
        if output.exists() and os.path.exists(candidate):
            return os.path.samefile(output, candidate)
    except OSError:
        pass
    try:
        return output.resolve() == Path(candidate).resolve()
    except (OSError, RuntimeError):
        return False


def refuse_overwriting_inputs(output: str | os.PathLike, *inputs: object) -> None:
    """Raise :class:`OutputIsInputError` if ``output`` is the same file as any input; ``overwrite`` cannot override
    this. ``inputs``: sources (whatever they declare in ``paths``), paths, or lists of them; VRTs are followed to
    their members. Side files of an output (``x.tif.ovr``, a Zarr store's folder) count too: an input inside a
    Zarr output folder is refused."""
    out = Path(output)
    for f in input_files(inputs):
        if _same(out, f) or _inside(out, f):
            raise OutputIsInputError(
                f"the output {os.fspath(output)} is the same file as the input {f}: writing it would destroy the "
                "input (overwrite does not allow this); choose another output path"
            )


def _inside(output: Path, candidate: str) -> bool:
    """Whether ``candidate`` lies inside the folder ``output`` (a Zarr store being replaced)."""
    try:
        return output.is_dir() and Path(candidate).resolve().is_relative_to(output.resolve())
    except (OSError, RuntimeError):
        return False
