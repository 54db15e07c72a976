"""Import TFRecord predictions with the export's mixer into a georeferenced COG (Earth Engine's TFRecord upload).

Examples must come in the exported order (row-major patches, files in lexicographic order). Each feature key
becomes a band. A patch may still carry the kernel margin and is then centre-cropped; the margin may differ between
x and y (kernel ``[8, 4]``). It is the ``kernel`` given, else the one the export recorded in its spec beside the
mixer, else the one the patch's length fits (equal margins first). Only one row of patches is held in memory.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.windows import Window

from ..errors import CastError, InputError
from ..nodata import check_nodata, check_raster_dtype, default_nodata
from ..plan import XY, xy
from ..resources import memory_available
from ..sinks import GeoTIFFSink, OutputProfile
from ..sources import Grid, parse_crs
from ..spec import parse_dtype
from .common import progress_callback
from .image import margin_of
from .tfrecord import decode_example, iter_records

__all__ = ["Mixer", "import_predictions", "read_mixer"]

_MAX_SIDE = 2**31 - 1
"""GDAL's largest raster width or height."""


class Mixer:
    """The mixer sidecar: the unbuffered patch grid."""

    def __init__(self, crs: Any, transform: Affine, patch: XY, per_row: int, total: int) -> None:
        self.crs, self.transform, self.patch, self.per_row, self.total = crs, transform, patch, per_row, total
        if min(patch) <= 0:
            raise InputError(f"the mixer's patchDimensions {list(patch)} must be > 0; pass the export's mixer")
        if per_row <= 0 or total <= 0 or total % per_row:
            raise InputError(f"the mixer's totalPatches ({total}) is not a multiple of patchesPerRow ({per_row}), "
                             "both > 0; pass the export's mixer")
        self.rows = total // per_row
        w, h = per_row * patch.x, self.rows * patch.y
        if max(w, h) > _MAX_SIDE:
            raise InputError(f"the mixer describes a {w} x {h} px raster, wider or taller than a GeoTIFF holds "
                             f"({_MAX_SIDE} px); the mixer is corrupted: pass the export's mixer")
        a, e = transform.a, transform.e
        if not all(np.isfinite(list(transform))) or a == 0 or e == 0:
            raise InputError(f"the mixer's affine {list(transform)[:6]} has a zero or non-finite pixel size; pass "
                             "the export's mixer")

    @property
    def grid(self) -> Grid:
        return Grid(self.crs, self.transform, (self.rows * self.patch.y, self.per_row * self.patch.x))


def read_mixer(path: str | os.PathLike) -> Mixer:
    path = Path(path)
    if not path.exists():
        raise InputError(f"mixer file not found: {path}; it is the *-mixer.json written by the image export")
    try:
        m = json.loads(path.read_text())
        proj = m["projection"]
        a = [float(v) for v in proj["affine"]["doubleMatrix"]]
        if len(a) < 6:
            raise ValueError(f"doubleMatrix has {len(a)} values, not the 6 of an affine transform")
        pw, ph = (int(v) for v in m["patchDimensions"])
        per_row, total = int(m["patchesPerRow"]), int(m["totalPatches"])
        crs = proj.get("crs") or proj.get("wkt")
        if not crs:
            raise ValueError("projection.crs is missing")
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise InputError(
            f"{path} is not an Earth Engine mixer ({type(exc).__name__}: {exc}); it needs projection.crs, "
            "projection.affine.doubleMatrix, patchDimensions, patchesPerRow and totalPatches"
        ) from None
    return Mixer(parse_crs(crs), Affine(*a[:6]), XY(pw, ph), per_row, total)


def _expand(files: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    out: list[str] = []
    for item in items:
        s = str(item)
        if os.path.isdir(s):  # listed, not globbed: a folder name may hold glob characters ('run[1]'), and
            # a suffix is recognised whatever its case (an export may be named OUT.TFRECORD.GZ)
            out += [os.path.join(s, n) for n in os.listdir(s)
                    if not n.startswith(".") and n.lower().endswith((".tfrecord", ".tfrecord.gz"))]
        elif any(ch in s for ch in "*?[") and not os.path.exists(s):
            out += glob.glob(s)
        else:
            out.append(s)
    out = [f for f in out if not f.endswith(".json")]
    if not out:
        raise InputError(f"no TFRecord files in {files}; pass .tfrecord or .tfrecord.gz files")
    # Earth Engine reads the files in lexicographic order of their names; patch order continues across them.
    return sorted(out, key=lambda f: (os.path.basename(f), f))


def export_margin(mixer: str | os.PathLike) -> XY | None:
    """The total kernel margin that tilecast's export recorded in its spec (``PREFIX.spec.json`` beside
    ``PREFIX-mixer.json``), or None (an export from elsewhere, or no spec)."""
    path = Path(mixer)
    if not path.name.endswith("-mixer.json"):
        return None
    spec = path.with_name(path.name[: -len("-mixer.json")] + ".spec.json")
    try:
        meta = json.loads(spec.read_text())
        if meta.get("mixer") != path.name:
            return None
        mx, my = (int(v) for v in meta["margin"])
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return XY(mx, my)


@functools.lru_cache(maxsize=64)
def _fitting_margins(n: int, patch: XY) -> tuple[XY, ...]:
    """Every even total margin (x, y) with ``(patch.x + x) * (patch.y + y) == n``, equal margins first."""
    fits = []
    for mx in range(0, n // max(patch.y, 1) - patch.x + 1, 2):
        rows, rest = divmod(n, patch.x + mx)
        my = rows - patch.y
        if not rest and my >= 0 and my % 2 == 0 and (mx, my) != (0, 0):
            fits.append(XY(mx, my))
    return tuple(sorted(fits, key=lambda m: (m.x != m.y, m.x)))


def _crop(values: np.ndarray, patch: XY, margin: XY | None, key: str, index: int) -> np.ndarray:
    """Reshape one feature to the patch, centre-cropping the kernel margin if it carries one."""
    n = values.size
    if n == patch.x * patch.y:
        return values.reshape(patch.y, patch.x)
    if margin is None:
        fits = _fitting_margins(n, patch)
        if len(fits) > 1 and fits[0].x != fits[0].y:
            raise InputError(
                f"example {index} has {n} values in feature {key!r}: the patch {patch.x} x {patch.y} plus any of the "
                f"kernel margins {[list(m) for m in fits]}; pass the export's kernel (kernel=[X, Y], --kernel X,Y)"
            )
        margin = fits[0] if fits else None
    if margin is None or (patch.x + margin.x) * (patch.y + margin.y) != n:
        padded = "the patch plus an even kernel margin" if margin is None else \
            f"the patch plus the kernel margin {list(margin)} ({(patch.x + margin.x) * (patch.y + margin.y)})"
        raise InputError(
            f"example {index} has {n} values in feature {key!r}, which fits neither the patch {patch.x} x {patch.y} "
            f"({patch.x * patch.y}) nor {padded}; write one value per pixel of each (cropped) patch, or pass the "
            "export's kernel (--kernel)"
        )
    full = values.reshape(patch.y + margin.y, patch.x + margin.x)
    top, left = margin.y // 2, margin.x // 2
    return full[top : top + patch.y, left : left + patch.x]


def _feature(example: dict[str, Any], key: str, index: int) -> np.ndarray:
    """One band's values of an example; bytes or a missing key are errors naming the example."""
    if key not in example:
        raise InputError(f"example {index} has no feature {key!r}; every example needs the same keys")
    values = example[key]
    if isinstance(values, list):
        raise InputError(f"example {index}: feature {key!r} holds bytes; only float_list and int64_list features "
                         "become bands")
    return values


def _examples(files: list[str]) -> Iterator[dict[str, Any]]:
    for f in files:
        for rec in iter_records(f):
            yield decode_example(rec)


def import_predictions(
    files: str | os.PathLike | Sequence[str | os.PathLike],
    mixer: str | os.PathLike | Mixer,
    output: str | os.PathLike,
    *,
    bands: Sequence[str] | None = None,
    dtype: str | None = None,
    nodata: float | None = None,
    kernel: int | Sequence[int] | None = None,
    overwrite: bool = False,
    progress: bool | Callable | None = None,
) -> Path:
    """Write the predictions in ``files`` (TFRecord Examples, one per exported patch) as a COG at ``output``.

    ``kernel``: the export's ``kernelSize``, for patches that still carry its margin; by default the one recorded
    beside the mixer by tilecast's export."""
    mix = mixer if isinstance(mixer, Mixer) else read_mixer(mixer)
    if kernel is not None:
        margin: XY | None = margin_of(xy(kernel, "kernel"))
    else:
        margin = None if isinstance(mixer, Mixer) else export_margin(mixer)
    paths = _expand(files)
    sink = GeoTIFFSink(output, overwrite=overwrite)
    prog = progress_callback(progress, "import", "patches")  # one example per exported patch
    grid = mix.grid
    width = grid.shape[1]
    it = _examples(paths)
    first = next(it, None)
    if first is None:
        raise InputError(f"the TFRecord files hold no examples; the mixer expects {mix.total}")
    keys = list(bands) if bands else sorted(first)
    missing = [k for k in keys if k not in first]
    if missing:
        raise InputError(f"the examples have no feature {missing[0]!r}; their features are {sorted(first)}")
    for k in keys:
        if isinstance(first[k], list):
            raise InputError(f"feature {k!r} holds bytes; only float_list and int64_list features become bands")
    is_int = all(np.asarray(first[k]).dtype.kind == "i" for k in keys)
    out_dtype = parse_dtype(dtype, "--dtype") if dtype else np.dtype(np.int32 if is_int else np.float32)
    check_raster_dtype(out_dtype, "--dtype")
    nodata = default_nodata(out_dtype) if nodata is None else nodata  # GIS tools show the COG's gaps as gaps
    check_nodata(nodata, out_dtype)
    check_strip_memory(len(keys) * mix.patch.y * width * out_dtype.itemsize, mix)
    profile = OutputProfile(grid, tuple(keys), out_dtype, nodata, categorical=is_int)
    sink.open(profile)
    try:
        strip = np.zeros((len(keys), mix.patch.y, width), dtype=out_dtype)
        count = 0

        def examples() -> Iterator[dict[str, Any]]:
            yield first
            yield from it

        for ex in examples():
            if count >= mix.total:
                raise InputError(
                    f"the TFRecord files hold more examples than the mixer's {mix.total} patches; pass exactly the "
                    "predictions of that export, one example per patch"
                )
            col = count % mix.per_row
            for b, k in enumerate(keys):
                patch = _crop(_feature(ex, k, count), mix.patch, margin, k, count)
                strip[b, :, col * mix.patch.x : (col + 1) * mix.patch.x] = _cast(patch, out_dtype, k)
            count += 1
            if col == mix.per_row - 1:
                row = count // mix.per_row - 1
                sink.write(Window(0, row * mix.patch.y, width, mix.patch.y), strip)
                if prog:
                    prog(count, mix.total, count * mix.patch.x * mix.patch.y)
        if count != mix.total:
            raise InputError(
                f"the TFRecord files hold {count} examples but the mixer describes {mix.total} patches "
                f"({mix.total // mix.per_row} rows of {mix.per_row}); pass all prediction files of the export"
            )
        return sink.close()
    except BaseException:
        sink.abort()
        raise


def check_strip_memory(nbytes: int, mix: Mixer) -> None:
    """One row of patches is held in memory; refuse a row that cannot fit before allocating it."""
    avail = memory_available()
    if nbytes > avail // 2:
        raise InputError(
            f"a row of {mix.per_row} patches of {mix.patch.x} x {mix.patch.y} px needs {nbytes / 2**30:.1f} GiB, more "
            f"than half of the {avail / 2**30:.1f} GiB available; the mixer is corrupted, or import on a larger "
            "machine"
        )


def _cast(values: np.ndarray, dtype: np.dtype, key: str) -> np.ndarray:
    if dtype.kind in "iu" and values.dtype.kind == "f":
        values = np.rint(values)
        if not np.isfinite(values).all():
            raise CastError(f"feature {key!r} has NaN or infinite values that {dtype} cannot hold; pass a float "
                            "--dtype (e.g. float32), or write the --nodata value in their place")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise InputError(f"feature {key!r} has values outside {dtype}; pass a wider dtype (--dtype)")
    return values.astype(dtype, copy=False)

