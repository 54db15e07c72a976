"""Vector outputs at scale: a million objects over a 20000 x 20000 raster, in bounded memory and near model speed.

An analytic detector (one anchor per pixel, scoring 1 at the top-left corner of a whole bright square; a dense
YOLO v8-style head ``(N, 5, h, w)``) runs over a generated raster of squares on a jittered grid, so the exact count
of objects is known. Measured, each in a fresh process (median of ``--repeats``):

- ``vectors N`` and ``vectors 2N``: ``predict_vectors`` to GeoParquet, with N and twice N squares on the same raster
  size. Peak RSS must stay under 1 GiB and flat when the objects double; every square must come out exactly once.
- ``raw tensor``: the same model writing its raw output tensor (5 float32 bands) with ``to_geotiff``.
- ``model only``: the same reads, batches and model calls, outputs dropped: the ceiling for any writer.

Full size (tens of minutes on a small machine, most of it generating the two rasters)::

    python bench/bench_vectors.py --size 20000 --objects 1000000

A shared 2-core machine takes ``--size 5000 --objects 62500`` (the same density) in a few minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, OUT_DIR, fmt_ratio, median, run_measured

SIDE, TILE, OVERLAP = 6, 512, 8


def make_squares(path: Path, size: int, objects: int, seed: int = 0) -> int:
    """A ``size``-square uint8 raster with about ``objects`` squares of SIDE pixels on a jittered grid, written
    strip by strip (bounded memory); returns the exact count."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    cell = max(SIDE + 3, int(size / math.sqrt(objects)))
    cells = size // cell
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8", crs="EPSG:32633",
                   transform=from_origin(500000.0, 4600000.0, 0.5, 0.5), tiled=True, blockxsize=512,
                   blockysize=512, compress="DEFLATE")
    count = 0
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r in range(math.ceil(size / cell)):
            h = min(cell, size - r * cell)
            strip = np.zeros((h, size), np.uint8)
            if r < cells:
                dy = rng.integers(1, cell - SIDE - 1, cells)
                dx = rng.integers(1, cell - SIDE - 1, cells)
                for c in range(cells):
                    x = c * cell + dx[c]
                    strip[dy[c]: dy[c] + SIDE, x: x + SIDE] = 1
                count += cells
            dst.write(strip[None], window=Window(0, r * cell, size, h))
    tmp.rename(path)
    path.with_suffix(".json").write_text(json.dumps({"objects": count}))
    return count


def make_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    view = TILE + 2 * OVERLAP
    k = np.zeros((1, 1, SIDE + 2, SIDE + 2), np.float32)
    for (dy, dx), v in {(0, 0): 1, (SIDE - 1, SIDE - 1): 1, (0, -1): -1, (-1, 0): -1, (SIDE - 1, SIDE): -1,
                        (SIDE, SIDE - 1): -1}.items():
        k[0, 0, dy + 1, dx + 1] = v
    yy, xx = np.mgrid[0:view, 0:view].astype(np.float32)
    coords = np.stack([xx + SIDE / 2, yy + SIDE / 2, np.full_like(xx, SIDE), np.full_like(xx, SIDE)])[None]
    inits = [numpy_helper.from_array(k, "k"), numpy_helper.from_array(coords, "coords"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero")]
    nodes = [helper.make_node("Conv", ["image", "k"], ["s"], kernel_shape=[SIDE + 2] * 2, pads=[1, 1, SIDE, SIDE]),
             helper.make_node("Sub", ["s", "one"], ["s1"]), helper.make_node("Relu", ["s1"], ["score"]),
             helper.make_node("Mul", ["score", "zero"], ["z"]), helper.make_node("Add", ["z", "coords"], ["boxes"]),
             helper.make_node("Concat", ["boxes", "score"], ["det"], axis=1)]
    graph = helper.make_graph(nodes, "squares", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                                               ["N", 1, view, view])],
                              [helper.make_tensor_value_info("det", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _model(model_path: str, raw: bool = False):
    import tilecast

    bands = {"det": {"type": "float32", "dimensions": 1}} if raw else None
    return tilecast.Model.from_onnx(model_path, input_tile_size=TILE, input_overlap_size=OVERLAP, layout="NCHW",
                                    output_bands=bands)


def worker(args: argparse.Namespace) -> None:
    """One measured run; prints its JSON result last."""
    import resource

    start = time.perf_counter()
    cpu0 = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    extra: dict = {}
    if args.variant == "vectors":
        from tilecast.vectors import predict_vectors

        pred = _model(args.model).predict_image(args.raster)
        out = predict_vectors(pred, args.out, overwrite=True, detector="yolo_v8")
        import pyarrow.parquet as pq

        extra["features"] = pq.ParquetFile(out).metadata.num_rows
    elif args.variant == "raw":
        pred = _model(args.model, raw=True).predict_image(args.raster)
        pred.to_geotiff(args.out, overwrite=True)
    else:  # model only: the same reads, batches and model calls, outputs dropped
        from concurrent.futures import ThreadPoolExecutor

        from tilecast.resources import Resources
        from tilecast.runners.ordered import batches, in_order
        from tilecast.runtimes.base import streams_of
        from tilecast.vectors.run import detector_job

        job = detector_job(_model(args.model).predict_image(args.raster))
        streams = streams_of(job.runtime)
        threads = Resources.detect().read_threads
        with ThreadPoolExecutor(threads) as pool, ThreadPoolExecutor(streams) as models:
            reads = (item for _, item in in_order(pool, job.plan.tiles(), job.read, max(16, 2 * threads)))
            groups = batches(job, reads, len(job.plan))
            for _ in in_order(models, groups, lambda g: job.runtime.run(job.pack([t for t in g if not t.skip])),
                              streams):
                pass
    cpu = sum(resource.getrusage(resource.RUSAGE_SELF)[:2]) - cpu0
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu": cpu, **extra}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--objects", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", dest="variant", choices=["vectors", "raw", "model"])
    ap.add_argument("--raster")
    ap.add_argument("--model")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.variant:
        worker(args)
        return
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    model = DATA_DIR / f"squares_{TILE + 2 * OVERLAP}.onnx"
    if not model.exists():
        make_model(model)
    rasters = {}
    for n in (args.objects, 2 * args.objects):
        path = DATA_DIR / f"squares_{args.size}_{n}.tif"
        if not path.exists():
            make_squares(path, args.size, n)
        rasters[n] = (path, json.loads(path.with_suffix(".json").read_text())["objects"])
    me = str(Path(__file__).resolve())
    runs: dict[str, list] = {}
    variants = [(f"vectors N={rasters[args.objects][1]}", "vectors", args.objects, "v1.parquet"),
                (f"vectors 2N={rasters[2 * args.objects][1]}", "vectors", 2 * args.objects, "v2.parquet"),
                ("raw tensor (to_geotiff)", "raw", args.objects, "raw.tif"),
                ("model only", "model", args.objects, "none")]
    for _ in range(args.repeats):  # interleaved, so a busy spell on the shared machine hits every variant
        for name, variant, n, out in variants:
            m = run_measured([me, "--worker", variant, "--raster", str(rasters[n][0]), "--model", str(model),
                              "--out", str(OUT_DIR / out)])
            if variant == "vectors" and m.extra["features"] != rasters[n][1]:
                raise SystemExit(f"{name}: {m.extra['features']} features for {rasters[n][1]} squares")
            runs.setdefault(name, []).append(m)
            print(f"  run {len(runs[name])}: {name}: {m.seconds:.1f} s wall, {m.cpu:.1f} s cpu, peak RSS "
                  f"{m.peak_rss / 2**20:.0f} MiB, load {m.load:.1f}", file=sys.stderr, flush=True)
    px = args.size * args.size
    print(f"bench_vectors: {args.size} x {args.size} px, tile {TILE} + {OVERLAP} overlap, {SIDE}-px squares, "
          f"median of {args.repeats}")
    print(f"{'variant':32} {'wall s':>8} {'cpu s':>8} {'Mpx/s':>8} {'peak RSS MiB':>13}")
    for name, ms in runs.items():
        wall = median([m.seconds for m in ms])
        print(f"{name:32} {wall:8.1f} {median([m.cpu for m in ms]):8.1f} {px / wall / 1e6:8.1f} "
              f"{median([m.peak_rss for m in ms]) / 2**20:13.0f}")
    wall = {k: median([m.seconds for m in v]) for k, v in runs.items()}
    rss = {k: median([m.peak_rss for m in v]) for k, v in runs.items()}
    v1, v2 = (k for k in runs if k.startswith("vectors"))
    print(f"throughput vectors / raw tensor: {fmt_ratio(wall['raw tensor (to_geotiff)'], wall[v1])} (target >= 0.85)")
    print(f"throughput vectors / model only: {fmt_ratio(wall['model only'], wall[v1])}")
    print(f"peak RSS 2N / N: {fmt_ratio(rss[v2], rss[v1])} (flat: about 1); vectors N peak "
          f"{rss[v1] / 2**20:.0f} MiB (target < 1024)")


if __name__ == "__main__":
    main()
