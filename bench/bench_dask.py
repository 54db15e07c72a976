"""Local runner versus Dask LocalCluster (1 and 2 workers) on one raster, plus Dask's per-task overhead.

Each variant runs in a fresh process; medians over ``--repeats`` are reported, with Mpx/s and the ratio to the
local runner measured in the same run. Cluster start-up is timed separately (it is paid once per session, not per
raster). Also measured: the scheduler's round trip for an empty task and the data each chunk task reads and writes,
the two figures ``docs/scaling.md`` uses to project throughput to N machines.

    python bench/bench_dask.py                  # 4096 x 4096 x 4, compute-bound and I/O-bound models
    python bench/bench_dask.py --quick          # a smoke run
    python bench/bench_dask.py --only io --size 4096

Target: Dask with 1 worker >= 0.85 x the local runner (the per-task overhead stays small).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DATA_DIR, OUT_DIR, fmt_ratio, make_raster, median, mpx_per_s, run_measured

VARIANTS = ("local", "dask-1", "dask-2")
CLUSTERS = {"dask-1": (1, 2), "dask-2": (2, 1)}
"""Workers and threads per worker: both use the machine's 2 cores."""


def work(p: dict) -> dict:
    import tilecast

    model = tilecast.Model.from_onnx(
        p["model"], input_tile_size=p["tile"], input_overlap_size=p["overlap"], output_bands={"score": "float32"},
        layout="NCHW", batch_size=p["batch"], blend=p["blend"],
    )
    pred = model.predict_image(p["raster"])
    if p["variant"] == "local":
        start, cpu = time.perf_counter(), time.process_time()
        pred.to_geotiff(p["out"], overwrite=True)
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    import distributed

    from tilecast.runners.dask_tasks import local_cluster

    workers, threads = CLUSTERS[p["variant"]]
    t0 = time.perf_counter()
    # tilecast's own LocalCluster settings (on CPython 3.11, no task profiler: it can deadlock a worker)
    with local_cluster(n_workers=workers, threads_per_worker=threads, dashboard_address="127.0.0.1:0",
                       silence_logs=40) as cluster, distributed.Client(cluster) as client:
        client.run(_warm_imports)  # a long-lived cluster has these imported; the local variant did too
        startup = time.perf_counter() - t0
        start = time.perf_counter()
        pred.to_geotiff(p["out"], overwrite=True, engine=tilecast.Dask(client=client), chunk_size=p["chunk"])
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "startup": startup}


def _warm_imports() -> None:
    import onnxruntime  # noqa: F401

    import tilecast.runners.dask
    import tilecast.sinks.chunked  # noqa: F401


def overhead(p: dict) -> dict:
    """Round trip of empty tasks on a 1-worker cluster, submitted the way the runner does (bounded in flight)."""
    import distributed

    def noop(ctx, i):
        return i

    from tilecast.runners.dask_tasks import local_cluster

    with local_cluster(n_workers=1, threads_per_worker=2, dashboard_address="127.0.0.1:0",
                       silence_logs=40) as cluster, distributed.Client(cluster) as client:
        ctx = client.scatter(b"x" * 4096, broadcast=True)
        n = p["tasks"]
        start = time.perf_counter()
        it = iter(range(n))
        ac = distributed.as_completed([client.submit(noop, ctx, next(it), pure=False) for _ in range(8)])
        for fut in ac:
            fut.result()
            i = next(it, None)
            if i is not None:
                ac.add(client.submit(noop, ctx, i, pure=False))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "per_task_ms": 1000 * seconds / n}


def task_volume(raster: str, model: str, tile: int, overlap: int, chunk: int) -> dict:
    """Bytes a chunk task reads (input windows with halo) and writes (its output window), for a full chunk."""
    import tilecast
    from tilecast.runners.chunks import ChunkLayout

    pred = tilecast.Model.from_onnx(model, input_tile_size=tile, input_overlap_size=overlap, layout="NCHW",
                                    output_bands={"score": "float32"}).predict_image(raster)
    layout = ChunkLayout.create(pred.plan, False, chunk)
    tiles = layout.tiles(0)
    itemsize = pred.source.dtype.itemsize
    bands = len(pred.source.band_names)
    read = sum(int(t.read.width * t.read.height) for t in tiles) * bands * itemsize
    win = layout.window(0)
    return {"chunks": len(layout), "tiles_per_chunk": len(tiles), "read_bytes": read,
            "write_bytes": int(win.width * win.height) * 4, "chunk_px": int(win.width * win.height)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, help="raster width = height (default 4096; 1024 with --quick)")
    ap.add_argument("--repeats", type=int, help="runs per variant (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma list of models: compute, io")
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--chunk", type=int, default=2048, help="output chunk edge in pixels (whole tiles)")
    ap.add_argument("--tasks", type=int, default=1000, help="empty tasks for the overhead measurement")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        p = json.loads(args.worker)
        print(json.dumps(overhead(p) if p["variant"] == "overhead" else work(p)))
        return 0
    sys.stdout.reconfigure(line_buffering=True)
    size = args.size or (1024 if args.quick else 4096)
    repeats = args.repeats or (1 if args.quick else 3)
    models = set((args.only or "compute,io").split(","))
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    from models import build_compute_bound, build_io_bound

    paths = {"compute": build_compute_bound(DATA_DIR / "compute_bound.onnx"),
             "io": build_io_bound(DATA_DIR / "io_bound.onnx")}
    raster = make_raster(DATA_DIR / f"bench_{size}.tif", size)
    pixels = size * size
    print(f"raster {size} x {size} x 4 uint16, tile {args.tile} overlap {args.overlap}, batch {args.batch_size}, "
          f"chunk {args.chunk} px, {os.cpu_count()} CPUs, {repeats} repeat(s), medians")
    results: dict = {"size": size, "models": {}}
    for name in ("compute", "io"):
        if name not in models:
            continue
        rows = {}
        for variant in VARIANTS:
            runs = []
            for _ in range(repeats):
                p = {"variant": variant, "model": str(paths[name]), "raster": str(raster), "tile": args.tile,
                     "overlap": args.overlap, "batch": args.batch_size, "blend": "crop", "chunk": args.chunk,
                     "out": str(OUT_DIR / f"dask_{name}_{variant}.tif")}
                runs.append(run_measured([__file__, "--worker", json.dumps(p)], timeout=3600))
            secs = median([m.seconds for m in runs])
            startup = median([m.extra.get("startup", 0.0) for m in runs])
            rows[variant] = {"seconds": secs, "mpx_s": mpx_per_s(pixels, secs), "startup_s": startup,
                             "peak_rss_mib": max(m.peak_rss for m in runs) / 2**20}
        base = rows["local"]["seconds"]
        print(f"\n{name}-bound model")
        print(f"  {'variant':8} {'Mpx/s':>8} {'x local':>8} {'seconds':>8} {'startup':>8} {'client RSS':>11}")
        for variant, r in rows.items():
            print(f"  {variant:8} {r['mpx_s']:8.2f} {fmt_ratio(base, r['seconds']):>8} {r['seconds']:8.2f} "
                  f"{r['startup_s']:8.2f} {r['peak_rss_mib']:9.0f} MiB")
            r["ratio_to_local"] = base / r["seconds"]
        results["models"][name] = rows
    ov = run_measured([__file__, "--worker", json.dumps({"variant": "overhead", "tasks": args.tasks})], timeout=600)
    vol = task_volume(str(raster), str(paths["io"]), args.tile, args.overlap, args.chunk)
    results["overhead_ms_per_task"] = ov.extra["per_task_ms"]
    results["task_volume"] = vol
    print(f"\nscheduler round trip: {ov.extra['per_task_ms']:.2f} ms per empty task ({args.tasks} tasks, 8 in flight)")
    print(f"per chunk task: {vol['tiles_per_chunk']} tiles, reads {vol['read_bytes'] / 2**20:.1f} MiB, writes "
          f"{vol['write_bytes'] / 2**20:.1f} MiB ({vol['chunks']} chunks)")
    (OUT_DIR / "bench_dask.json").write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
