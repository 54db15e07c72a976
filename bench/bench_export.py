"""Benchmark: TFRecord training-data export vs a naive one-read-per-point loop.

    python bench/bench_export.py                 # 1,000,000 point samples + 20,000 64x64 patches, 3 repeats
    python bench/bench_export.py --quick         # a smoke-sized run

A generated 8192 x 8192 x 4 uint16 tiled DEFLATE GeoTIFF (no download). Variants, each in a fresh subprocess so
its peak RSS is its own:

- ``tilecast samples``: ``export_samples`` of N random labelled points (a GeoDataFrame) to one GZIP TFRecord.
- ``naive samples``: for a subset of the same points, ``dataset.read(window=1x1)`` per point, then the same
  Example encoding and TFRecord writer; its rate is what a user's loop gets.
- ``tilecast patches`` / ``naive patches``: the same for 64 x 64 patches (the naive loop reads one boundless
  window per patch).

Reports medians of samples/s, the speed-up over the naive loop measured in the same run, and peak RSS.
Targets: >= 5x faster than the naive loop, peak RSS < 1 GiB.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZE = 8192
BANDS = 4


def make_raster(path: Path, size: int) -> Path:
    """Smooth, compressible uint16 bands written block by block (bounded memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", width=size, height=size, count=BANDS, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000, 5000000, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                   compress="DEFLATE", nodata=0)
    rng = np.random.default_rng(0)
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, size, 512):
            rr = np.arange(r0, min(r0 + 512, size))[:, None]
            cc = np.arange(size)[None, :]
            bands = [(1000 + 500 * np.sin(rr / (40 + 9 * b)) * np.cos(cc / (55 + 7 * b))
                      + rng.integers(0, 50, (len(rr), size))).astype("uint16") for b in range(BANDS)]
            dst.write(np.stack(bands), window=Window(0, r0, size, len(rr)))
    return path


def points(n: int, size: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, size, n), rng.integers(0, size, n)


def variant(name: str, raster: str, n: int, out: str) -> dict:
    """Run one variant in this process and return its timing."""
    import geopandas as gpd
    import rasterio
    from rasterio.transform import xy
    from rasterio.windows import Window

    from tilecast.export import export_samples
    from tilecast.export.tfrecord import ShardedWriter, example_bytes

    patch = 64 if "patches" in name else None
    with rasterio.open(raster) as ds:
        transform, crs, size = ds.transform, ds.crs, ds.width
    rows, cols = points(n, size, seed=2 if patch else 1)
    labels = (rows + cols) % 7
    t0 = time.perf_counter()
    if name.startswith("tilecast"):
        xs, ys = xy(transform, rows, cols)
        gdf = gpd.GeoDataFrame({"cls": labels}, geometry=gpd.points_from_xy(xs, ys), crs=crs)
        outp = Path(out) / ("p/" if patch else "s.tfrecord.gz")
        if patch:
            outp.mkdir()
        res = export_samples(raster, outp, labels=gdf, label_field="cls", patch=patch, drop_masked=False)
        count = res.count
    else:
        count = 0
        with rasterio.open(raster) as ds, ShardedWriter(out, "naive") as w:
            names = [f"b{i + 1}" for i in range(ds.count)]
            for r, c, lab in zip(rows.tolist(), cols.tolist(), labels.tolist(), strict=True):
                if patch:
                    win = Window(c - patch // 2, r - patch // 2, patch, patch)
                    data = ds.read(window=win, boundless=True, fill_value=0).astype(np.float32)
                else:
                    data = ds.read(window=Window(c, r, 1, 1)).astype(np.float32)
                feats = {b: data[i] for i, b in enumerate(names)}
                feats["cls"] = float(lab)
                w.write(example_bytes(feats))
                count += 1
            w.close()
    seconds = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"variant": name, "count": count, "seconds": seconds, "per_s": count / seconds, "rss": rss}


def measure(name: str, raster: Path, n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, __file__, "--variant", name, "--raster", str(raster), "-n", str(n), "--out", tmp],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant")
    p.add_argument("--raster")
    p.add_argument("-n", type=int)
    p.add_argument("--out")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "tilecast-bench-export")
    args = p.parse_args()
    if args.variant:
        print(json.dumps(variant(args.variant, args.raster, args.n, args.out)))
        return 0
    global SIZE
    if args.quick:
        SIZE = 2048
    args.data.mkdir(parents=True, exist_ok=True)
    raster = args.data / f"bench_{SIZE}x{SIZE}x{BANDS}_uint16.tif"
    if not raster.exists():
        print(f"generating {raster} ...", file=sys.stderr)
        make_raster(raster, SIZE)
    sizes = {"samples": (20_000, 1_000_000), "patches": (2_000, 20_000)}
    if args.quick:
        sizes = {"samples": (2_000, 50_000), "patches": (200, 1_000)}
    rows = []
    for kind, (n_naive, n_tc) in sizes.items():
        res = {}
        for name, n in ((f"naive {kind}", n_naive), (f"tilecast {kind}", n_tc)):
            runs = [measure(name, raster, n) for _ in range(args.repeats)]
            res[name] = {
                "count": runs[0]["count"],
                "per_s": statistics.median(r["per_s"] for r in runs),
                "seconds": statistics.median(r["seconds"] for r in runs),
                "rss_mib": max(r["rss"] for r in runs) / 2**20,
            }
            print(f"{name:18s} n={res[name]['count']:>9,d}  {res[name]['per_s']:>10,.0f} samples/s  "
                  f"median {res[name]['seconds']:7.2f} s  peak RSS {res[name]['rss_mib']:6.0f} MiB", flush=True)
        ratio = res[f"tilecast {kind}"]["per_s"] / res[f"naive {kind}"]["per_s"]
        rows.append((kind, ratio, res[f"tilecast {kind}"]["rss_mib"]))
    print()
    print(f"{'export':10s} {'speed-up vs naive':>18s} {'peak RSS':>10s}   (raster {SIZE}x{SIZE}x{BANDS} uint16, "
          f"{args.repeats} repeats, medians)")
    for kind, ratio, rss in rows:
        ok = "ok" if ratio >= 5 and rss < 1024 else "MISSED"
        print(f"{kind:10s} {ratio:17.1f}x {rss:8.0f} MiB   target >= 5x, < 1024 MiB: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
