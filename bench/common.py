"""Helpers shared by the benchmarks: generated rasters, per-process peak RSS, medians and ratio tables.

Benchmarks never download data: rasters are generated here, window by window, so generating a 20000 x 20000 raster
takes bounded memory. Every measured variant runs in a fresh subprocess so its peak RSS is its own.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tilecast.sinks.geotiff import TEMP_GTIFF_OPTIONS
from tilecast.sinks.geotiff import cog_options as sink_cog_options

__all__ = [
    "TMP_GTIFF_OPTIONS",
    "Measurement",
    "cog_options",
    "fmt_ratio",
    "halo_windows",
    "load_average",
    "make_raster",
    "median",
    "mpx_per_s",
    "run_measured",
]

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = BENCH_DIR / "data"
OUT_DIR = BENCH_DIR / "out"

# The sink's own options, so the I/O limit and the hand-written loop write exactly what tilecast writes (float output).
TMP_GTIFF_OPTIONS: dict[str, object] = dict(TEMP_GTIFF_OPTIONS)


def cog_options(shape: tuple[int, int]) -> dict[str, str]:
    """The COG options ``GeoTIFFSink`` uses for a float ``(height, width)`` output."""
    return sink_cog_options(shape)


def make_raster(
    path: str | Path,
    size: int,
    bands: int = 4,
    block: int = 512,
    seed: int = 42,
    progress: bool = True,
) -> Path:
    """A ``size`` x ``size`` x ``bands`` uint16 tiled DEFLATE GeoTIFF with smooth, compressible content.

    Written one block row at a time (memory ~ ``size * block * bands * 8`` bytes) to a temporary name and renamed,
    so an existing file at ``path`` is complete and is reused.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    if path.exists():
        with rasterio.open(path) as ds:
            if (ds.width, ds.height, ds.count, ds.dtypes[0]) == (size, size, bands, "uint16"):
                return path
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.tif")
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": from_origin(500000.0, 5000000.0, 10.0, 10.0), "tiled": True,
        "blockxsize": block, "blockysize": block, "compress": "DEFLATE", "predictor": 2, "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER", "interleave": "pixel",
    }
    rng = np.random.default_rng(seed)
    # Per band: a few separable waves (fields, gradients) at random scales and phases.
    waves = [(rng.uniform(2e-4, 6e-3, size=(3, 2)), rng.uniform(0, 2 * np.pi, size=(3, 2))) for _ in range(bands)]
    x = np.arange(size, dtype=np.float64)
    start = time.perf_counter()
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(("blue", "green", "red", "nir", *(f"b{j}" for j in range(5, bands + 1)))[:bands]):
            dst.set_band_description(i + 1, name)
        for r0 in range(0, size, block):
            h = min(block, size - r0)
            y = np.arange(r0, r0 + h, dtype=np.float64)
            strip = np.empty((bands, h, size), dtype=np.uint16)
            noise_rng = np.random.default_rng([seed, r0])
            for b, (freq, phase) in enumerate(waves):
                acc = np.zeros((h, size), dtype=np.float64)
                for (fy, fx), (py, px) in zip(freq, phase, strict=True):
                    acc += np.outer(np.sin(fy * y + py), np.cos(fx * x + px))
                acc = 3000 + 400 * b + 900 * acc
                acc += noise_rng.integers(0, 24, size=acc.shape)
                strip[b] = np.clip(acc, 0, 65535).astype(np.uint16)
            dst.write(strip, window=Window(0, r0, size, h))
            if progress:
                done = r0 + h
                print(f"\rgenerating {path.name}: {100 * done / size:5.1f}%", end="", file=sys.stderr, flush=True)
    if progress:
        print(f" ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    os.replace(tmp, path)
    return path


def halo_windows(
    height: int, width: int, tile: int, overlap: int
) -> Iterator[tuple[tuple[int, int, int, int], tuple[tuple[int, int], tuple[int, int]], tuple[int, int, int, int]]]:
    """Row-major tiles as a hand-written loop cuts them: ``(read, pad, core)``.

    ``read`` = ``(col, row, w, h)`` clipped to the raster, ``pad`` = ``((top, bottom), (left, right))`` zeros that
    complete the ``tile + 2 * overlap`` square, ``core`` = the ``(col, row, w, h)`` output window.
    """
    for r in range(0, height, tile):
        for c in range(0, width, tile):
            r0, c0, r1, c1 = r - overlap, c - overlap, r + tile + overlap, c + tile + overlap
            rr0, cc0, rr1, cc1 = max(r0, 0), max(c0, 0), min(r1, height), min(c1, width)
            read = (cc0, rr0, cc1 - cc0, rr1 - rr0)
            pad = ((rr0 - r0, r1 - rr1), (cc0 - c0, c1 - cc1))
            core = (c, r, min(tile, width - c), min(tile, height - r))
            yield read, pad, core


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def mpx_per_s(pixels: int, seconds: float) -> float:
    return pixels / seconds / 1e6 if seconds > 0 else math.nan


def fmt_ratio(num: float, den: float) -> str:
    return f"{num / den:.2f}" if den and not math.isnan(num) and not math.isnan(den) else "n/a"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


@dataclass
class Measurement:
    """One run of a variant in its own process."""

    seconds: float
    peak_rss: int
    """Peak resident set size of the child process, in bytes (``wait4``'s ``ru_maxrss``)."""
    load: float
    """1-minute load average when the run started: how busy the shared machine was."""
    cpu: float = math.nan
    """CPU seconds, all threads, of the timed part (or of the whole child if it reports none): unlike wall time,
    barely changed by other work on a shared machine."""
    extra: dict = field(default_factory=dict)


def run_measured(args: Sequence[str], timeout: float | None = None, env: dict[str, str] | None = None,
                 prefix: Sequence[str] = ()) -> Measurement:
    """Run ``python args...`` in a fresh process; it must print one JSON object with ``seconds`` (and optionally
    ``cpu``) last on stdout.

    Peak RSS comes from ``os.wait4`` on that very child (what ``RUSAGE_CHILDREN`` reports for a single child), so
    variants do not see each other's memory. ``prefix`` runs the child through a wrapper (``taskset -c 0``).
    """
    load = load_average()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([*prefix, sys.executable, *args], stdout=out, env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                raise TimeoutError(f"{' '.join(args)} ran over {timeout} s")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed (exit {proc.returncode}): {' '.join(args)}\n{text}")
    result = json.loads(text.strip().splitlines()[-1])
    seconds = float(result.pop("seconds"))
    cpu = float(result.pop("cpu", usage.ru_utime + usage.ru_stime))
    return Measurement(seconds, int(usage.ru_maxrss) * 1024, load, cpu, result)
