"""Does ``--tile auto`` reach ONNX Runtime's best speed? (issue 16: >= 0.85 of it, peak RSS < 1.5 GiB)

On the compute-bound benchmark model (``models.build_compute_bound``: ~29k multiply-adds per pixel) and a generated
4-band uint16 raster, one run measures, each in a fresh process, repeats interleaved, medians reported:

  ort-256, ort-512, ort-1024  ONNX Runtime alone on *unpadded* tiles of that size held in memory (no halo, no I/O):
                              ``session.run`` over as many tiles as cover the raster, batches of about 512k pixels,
                              the faster of one call at a time and tilecast's way of calling it (its ``streams``)
  auto                        tilecast end to end: ``Model.from_onnx(..., input_tile_size="auto",
                              input_overlap_size=16).predict_image(path).to_geotiff(...)``, probing included

and prints ``auto`` / the best ``ort-*`` (throughput ratio) and ``auto``'s peak RSS.

    .venv/bin/python bench/bench_autotile.py                      # the issue's size: 6144 x 6144, 3 repeats
    .venv/bin/python bench/bench_autotile.py --size 3072          # a small machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from common import DATA_DIR, OUT_DIR, load_average, make_raster, median, mpx_per_s, run_measured

SIZES = (256, 512, 1024)
OVERLAP = 16
RATIO_TARGET = 0.85
RSS_TARGET = int(1.5 * 2**30)
BATCH_PIXELS = 512 * 1024


def work_ort(p: dict) -> dict:
    """``session.run`` on unpadded ``tile``-px tiles read from the raster, cycled to cover it; only the runs are
    timed, the faster of sequential calls and tilecast's streams."""
    import rasterio
    from rasterio.windows import Window

    from bench_predict import _session, _time_runs
    from tilecast.runtimes.onnx import OnnxRuntime

    tile = p["tile"]
    with rasterio.open(p["raster"]) as ds:
        rows, cols = ds.height // tile, ds.width // tile  # whole tiles only: every call has the same shape
        n = math.ceil(ds.height / tile) * math.ceil(ds.width / tile)
        batch = max(1, BATCH_PIXELS // (tile * tile))
        spots = [divmod(k, cols) for k in range(min(2 * batch, rows * cols))]
        tiles = [ds.read(window=Window(c * tile, r * tile, tile, tile)) for r, c in spots]
        pool = [np.ascontiguousarray(np.stack([tiles[(b * batch + i) % len(tiles)] for i in range(batch)]),
                                     dtype=np.float32) for b in range(2)]
    sizes = [batch] * (n // batch) + ([n % batch] if n % batch else [])
    batches = [np.ascontiguousarray(pool[i % len(pool)][:size]) for i, size in enumerate(sizes)]
    runtime = OnnxRuntime(p["model"])
    sequential = _time_runs(_session(p["model"]), batches, 1)
    streams = _time_runs(runtime.session, batches, runtime.streams)
    best = min(sequential, streams, key=lambda r: r["seconds"])
    return {**best, "tiles": n, "batch": batch, "sequential_s": sequential["seconds"],
            "streams_s": streams["seconds"]}


def work_auto(p: dict) -> dict:
    import tilecast
    from tilecast.runstats import RunStats

    model = tilecast.Model.from_onnx(p["model"], input_tile_size="auto", input_overlap_size=OVERLAP,
                                     output_bands={"score": "float32"}, layout="NCHW")
    start, cpu = time.perf_counter(), time.process_time()
    prediction = model.predict_image(p["raster"])
    stats = RunStats()
    prediction.to_geotiff(p["out"], overwrite=True, stats=stats)
    choice = prediction.model.tile_choice
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
            "choice": choice.describe() if choice else "none", "profile": stats.summary()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=6144, help="raster width = height (default 6144)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        p = json.loads(args.worker)
        print(json.dumps(work_auto(p) if p["variant"] == "auto" else work_ort(p)))
        return 0
    sys.stdout.reconfigure(line_buffering=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from models import build_compute_bound

    model = build_compute_bound(args.data_dir / "compute_bound.onnx")
    raster = make_raster(args.data_dir / f"bench_{args.size}x{args.size}x4_uint16.tif", args.size)
    print(f"raster {args.size} x {args.size} x 4 uint16, overlap {OVERLAP}, {os.cpu_count()} CPUs, "
          f"{args.repeats} repeat(s), load {load_average():.1f}")
    variants = [*(f"ort-{s}" for s in SIZES), "auto"]
    results: dict[str, list] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for v in variants:
            out = args.out_dir / "autotile.tif"
            out.unlink(missing_ok=True)
            params = {"variant": v, "model": str(model), "raster": str(raster), "out": str(out),
                      "tile": int(v.split("-")[1]) if v.startswith("ort") else 0}
            m = run_measured([str(Path(__file__).resolve()), "--worker", json.dumps(params)], timeout=args.timeout)
            results[v].append(m)
            print(f"  [{rep + 1}/{args.repeats}] {v:9s} {m.seconds:7.2f} s  {m.peak_rss / 2**20:6.0f} MiB  "
                  f"load {m.load:.1f}", file=sys.stderr, flush=True)
    pixels = args.size**2
    secs = {v: median([m.seconds for m in ms]) for v, ms in results.items()}
    print(f"\n{'variant':10s} {'median s':>9s} {'Mpx/s':>8s} {'peak RSS':>9s}  runs (s)")
    for v, ms in results.items():
        print(f"{v:10s} {secs[v]:9.2f} {mpx_per_s(pixels, secs[v]):8.2f} "
              f"{max(m.peak_rss for m in ms) / 2**20:5.0f} MiB  " + " ".join(f"{m.seconds:.2f}" for m in ms))
    best = min((v for v in variants if v.startswith("ort")), key=lambda v: secs[v])
    ratio = secs[best] / secs["auto"]
    rss = max(m.peak_rss for m in results["auto"])
    middle = sorted(results["auto"], key=lambda m: m.seconds)[len(results["auto"]) // 2]
    print(f"auto chose: {middle.extra.get('choice')}")
    print(f"auto (median run) {middle.extra.get('profile')}")
    print(f"auto / {best} (ONNX Runtime's best, unpadded, in memory) = {ratio:.2f} "
          f"(target >= {RATIO_TARGET:.2f}: {'PASS' if ratio >= RATIO_TARGET else 'MISS'}); "
          f"auto peak RSS {rss / 2**20:.0f} MiB (target < {RSS_TARGET / 2**20:.0f} MiB: "
          f"{'PASS' if rss < RSS_TARGET else 'MISS'}); load after {load_average():.1f}")
    (args.out_dir / "autotile.tif").unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
