"""Does tilecast's own pipeline use a second core? (issue 16: 2 cores >= 1.8x as fast as 1 core)

With an almost free model (``models.build_argmax``: a 1x1 convolution and an argmax, cast to uint8) nearly all of a
run is tilecast itself: decoding the input, packing tensors, assembling, casting, the first overview level and the
COG. Each run is a fresh process pinned with ``taskset`` to CPU 0, or to CPUs 0 and 1; tilecast sizes its threads
from the CPUs it may use (its affinity mask). Repeats are interleaved and medians reported; the timed part is
``Model.from_onnx(...).predict_image(raster).to_geotiff(out)`` (imports excluded), and the worker also reports the
wall time after the last model call (the COG tail).

    .venv/bin/python bench/bench_scaling.py                  # 6144 x 6144 x 4 uint16 -> uint8 COG, 3 repeats
    .venv/bin/python bench/bench_scaling.py --size 3072 --repeats 5
    .venv/bin/python bench/bench_scaling.py --tile auto      # the largest tile within the memory budget
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_DIR, OUT_DIR, load_average, make_raster, median, mpx_per_s, run_measured

TARGET = 1.8


def cpu_sets() -> dict[str, str]:
    """The first one and two CPUs this process may use (``taskset -c 0`` and ``-c 0,1`` on a plain machine)."""
    cpus = sorted(os.sched_getaffinity(0))
    return {"1 core": str(cpus[0]), "2 cores": f"{cpus[0]},{cpus[1]}"} if len(cpus) >= 2 else {}


def work_model(p: dict) -> dict:
    """The model alone, as tilecast calls it (its streams and threads for the CPUs this process may use), on the
    padded 288 x 288 tiles of the run, in batches of 8, as many as the run makes, after a warm-up of every stream:
    the ceiling of the run's scaling."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from bench_predict import _time_runs
    from tilecast.runtimes.onnx import OnnxRuntime

    size, pad = 256 + 32, 16
    with rasterio.open(p["raster"]) as ds:
        tiles = [ds.read(window=Window(c * 256, r * 256, size, size), boundless=True).astype(np.float32)
                 for r, c in ((0, 0), (1, 3), (2, 5), (3, 1), (4, 4), (5, 2), (6, 6), (7, 0))]
        n = -(-ds.height // 256) * -(-ds.width // 256)
    del pad
    batch = np.ascontiguousarray(np.stack(tiles))
    batches = [batch] * (n // 8) + ([batch[: n % 8]] if n % 8 else [])
    runtime = OnnxRuntime(p["model"])
    # Every stream's first full batch grows ONNX Runtime's memory arena; on a run this short that one-off cost is
    # a tenth of the time, so it is paid before the timing: the ceiling is the model's steady-state scaling.
    from concurrent.futures import ThreadPoolExecutor
    name = runtime.session.get_inputs()[0].name
    with ThreadPoolExecutor(runtime.streams) as pool:
        list(pool.map(lambda _: runtime.session.run(None, {name: batch}), range(2 * runtime.streams)))
    return _time_runs(runtime.session, batches, runtime.streams)


def work(p: dict) -> dict:
    import tilecast
    from tilecast.runstats import RunStats

    tile = p["tile"] if p["tile"] == "auto" else int(p["tile"])
    model = tilecast.Model.from_onnx(p["model"], input_tile_size=tile, input_overlap_size=16, layout="NCHW",
                                     output_bands={"class": "uint8"})
    start, cpu = time.perf_counter(), time.process_time()
    stats = RunStats()
    model.predict_image(p["raster"]).to_geotiff(p["out"], overwrite=True, stats=stats)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cpu": time.process_time() - cpu, "profile": stats.summary(),
            "tail": seconds - (stats.last_call_end - start) if stats.last_call_end else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=6144, help="raster width = height (default 6144)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", default="256", help="core tile in pixels, or auto (default 256)")
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        params = json.loads(args.worker)
        print(json.dumps(work_model(params) if params.get("variant") == "model" else work(params)))
        return 0
    sets = cpu_sets()
    if shutil.which("taskset") is None or not sets:
        print("needs taskset (util-linux) and at least 2 CPUs, to pin the runs to 1 and 2 of them", file=sys.stderr)
        return 2
    sys.stdout.reconfigure(line_buffering=True)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from models import build_argmax

    model = build_argmax(args.data_dir / "argmax.onnx")
    raster = make_raster(args.data_dir / f"bench_{args.size}x{args.size}x4_uint16.tif", args.size)
    out = args.out_dir / "scaling.tif"
    print(f"raster {args.size} x {args.size} x 4 uint16 -> uint8 COG, tile {args.tile} + 16, {args.repeats} repeat(s), "
          f"load {load_average():.1f}")
    results: dict[str, list] = {k: [] for k in sets}
    alone: dict[str, list] = {k: [] for k in sets}
    for rep in range(args.repeats):
        for name, cpus in sets.items():
            params = {"model": str(model), "raster": str(raster), "out": str(out), "tile": args.tile}
            m = run_measured([str(Path(__file__).resolve()), "--worker", json.dumps(params)],
                             prefix=["taskset", "-c", cpus])
            results[name].append(m)
            a = run_measured([str(Path(__file__).resolve()), "--worker", json.dumps({**params, "variant": "model"})],
                             prefix=["taskset", "-c", cpus])
            alone[name].append(a)
            print(f"  [{rep + 1}/{args.repeats}] {name:8s} {m.seconds:6.2f} s  cpu {m.cpu:6.2f} s  "
                  f"tail {m.extra['tail']:5.2f} s  {m.peak_rss / 2**20:5.0f} MiB  load {m.load:.1f}; "
                  f"model alone {a.seconds:5.2f} s", file=sys.stderr, flush=True)
    pixels = args.size**2
    secs = {k: median([m.seconds for m in ms]) for k, ms in results.items()}
    print(f"\n{'CPUs':8s} {'median s':>9s} {'Mpx/s':>8s} {'tail s':>7s} {'peak RSS':>9s}  runs (s)")
    for k, ms in results.items():
        print(f"{k:8s} {secs[k]:9.2f} {mpx_per_s(pixels, secs[k]):8.2f} {median([m.extra['tail'] for m in ms]):7.2f} "
              f"{max(m.peak_rss for m in ms) / 2**20:5.0f} MiB  " + " ".join(f"{m.seconds:.2f}" for m in ms))
        print(f"         {sorted(ms, key=lambda m: m.seconds)[len(ms) // 2].extra['profile']}")
    ratio = secs["1 core"] / secs["2 cores"]
    model = {k: median([m.seconds for m in ms]) for k, ms in alone.items()}
    ceiling = model["1 core"] / model["2 cores"]
    print(f"model alone (ONNX Runtime on the run's padded tiles, tile 256 + 16): 1 core {model['1 core']:.2f} s, "
          f"2 cores {model['2 cores']:.2f} s = {ceiling:.2f}x")
    print(f"2 cores / 1 core = {ratio:.2f}x (target >= {TARGET:.1f}: {'PASS' if ratio >= TARGET else 'MISS'}); "
          f"{ratio / ceiling:.2f} of the model's own scaling; load after {load_average():.1f}")
    out.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
