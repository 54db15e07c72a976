"""How close does ``tilecast predict`` get to the compute limit and to the I/O limit?

For a compute-bound fully-convolutional network (~29k multiply-adds per pixel) and an I/O-bound per-pixel 1x1
model, on a generated 4-band uint16 raster, one run measures:

  a  compute limit: ONNX Runtime ``session.run`` on the padded tiles and batch size tilecast feeds the model,
     held in memory (same number of batches, same shapes; only session.run is timed); the faster of one call at a
     time with ONNX Runtime's defaults and tilecast's own way of calling it (its ``streams``)
  b  I/O limit: read the same windows (with halo) and write the same float32 COG with plain rasterio, no model
  c  a hand-written rasterio + ONNX Runtime window loop (read window -> session.run -> write window -> COG)
  d  tilecast: ``Model.from_onnx(...).predict_image(path).to_geotiff(...)`` (crop, and cosine for the
     compute-bound model)

Each variant runs in a fresh process (peak RSS is its own); repeats are interleaved and medians reported.

    .venv/bin/python bench/bench_predict.py                 # 6144 x 6144, 3 repeats
    .venv/bin/python bench/bench_predict.py --big           # + peak RSS on a 20000 x 20000 raster
    .venv/bin/python bench/bench_predict.py --quick         # smoke run
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

from common import (
    DATA_DIR,
    OUT_DIR,
    TMP_GTIFF_OPTIONS,
    Measurement,
    cog_options,
    halo_windows,
    load_average,
    make_raster,
    median,
    mpx_per_s,
    run_measured,
)

MODELS = ("compute", "io")
VARIANTS = ("a", "b", "c", "d")
LABELS = {
    "a": "a  ORT session.run (compute limit)",
    "b": "b  rasterio read+write (I/O limit)",
    "c": "c  hand-written rasterio+ORT loop",
    "d": "d  tilecast predict, crop",
    "d-cosine": "d  tilecast predict, cosine",
}
TARGETS = {  # (model, variant, baseline) -> minimum ratio
    ("compute", "d", "a"): 0.90,
    ("compute", "d-cosine", "a"): 0.80,
    ("io", "d", "b"): 0.80,
}
RSS_TARGET = 1 << 30


# ----------------------------------------------------------------------------------------------------- workers


def _session(model: str):
    """An ONNX Runtime session configured as tilecast's OnnxRuntime configures it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])


def _read_tile(ds, read, pad) -> np.ndarray:
    from rasterio.windows import Window

    data = ds.read(window=Window(*read))
    if any(pad[0]) or any(pad[1]):
        data = np.pad(data, ((0, 0), *pad))
    return data


def _open_output(path: str, src):
    import rasterio

    return rasterio.open(path, "w", width=src.width, height=src.height, count=1, dtype="float32", crs=src.crs,
                         transform=src.transform, nodata=float("nan"), **TMP_GTIFF_OPTIONS)


def _to_cog(tmp: str, out: str) -> None:
    """The COG conversion exactly as tilecast's sink makes it."""
    import rasterio

    from tilecast.sinks.geotiff import copy_to_cog

    with rasterio.open(tmp) as ds:
        shape = ds.shape
    copy_to_cog(tmp, out, cog_options(shape))
    os.remove(tmp)


def _timed(start: float, cpu: float, **extra: object) -> dict:
    """Wall seconds and CPU seconds (all threads of this process) since ``start`` / ``cpu``."""
    return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu, **extra}


def work_a(p: dict) -> dict:
    """Only ``session.run`` is timed, on a few real padded batches cycled to the batch count tilecast makes.

    Timed twice, and the faster one is the limit: one call at a time on a session with ONNX Runtime's defaults, and
    the way tilecast calls the model (its session options; ``streams`` calls at once, each with its share of the
    threads).
    """
    import rasterio

    from tilecast.runtimes.onnx import OnnxRuntime

    with rasterio.open(p["raster"]) as ds:
        windows = list(halo_windows(ds.height, ds.width, p["tile"], p["overlap"]))
        n, bs = len(windows), p["batch"]
        sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
        pool = []
        for k in range(min(4, len(sizes))):
            tiles = [_read_tile(ds, r, pad) for r, pad, _ in windows[k * bs : k * bs + bs]]
            pool.append(np.ascontiguousarray(np.stack(tiles), dtype=np.float32))
    batches = [pool[i % len(pool)][:size] for i, size in enumerate(sizes)]
    batches = [b if b.flags.c_contiguous else np.ascontiguousarray(b) for b in batches]
    runtime = OnnxRuntime(p["model"])
    sequential = _time_runs(_session(p["model"]), batches, 1)
    as_tilecast = _time_runs(runtime.session, batches, runtime.streams)
    best = min(sequential, as_tilecast, key=lambda r: r["seconds"])
    return {**best, "tiles": n, "batches": len(sizes), "sequential_s": sequential["seconds"],
            "streams_s": as_tilecast["seconds"], "streams": runtime.streams}


def _time_runs(session, batches: list[np.ndarray], streams: int) -> dict:
    """``session.run`` on every batch, ``streams`` calls at a time."""
    from concurrent.futures import ThreadPoolExecutor

    name = session.get_inputs()[0].name
    session.run(None, {name: batches[0][:1]})  # warm-up, as tilecast's first call also pays it
    start, cpu = time.perf_counter(), time.process_time()
    if streams == 1:
        for batch in batches:
            session.run(None, {name: batch})
    else:
        with ThreadPoolExecutor(streams) as pool:
            list(pool.map(lambda batch: session.run(None, {name: batch}), batches))
    return _timed(start, cpu)


def work_b(p: dict) -> dict:
    """Read every halo window, write the cropped cores as full-width strips, then build the COG: no model."""
    import rasterio
    from rasterio.windows import Window

    start, cpu = time.perf_counter(), time.process_time()
    tmp = p["out"] + ".tmp.tif"
    with rasterio.open(p["raster"]) as src, _open_output(tmp, src) as dst:
        tile, ov = p["tile"], p["overlap"]
        strip = None
        for read, pad, core in halo_windows(src.height, src.width, tile, ov):
            c, r, w, h = core
            if c == 0:
                strip = np.empty((1, h, src.width), dtype=np.float32)
            data = _read_tile(src, read, pad)
            # a per-pixel value with the entropy of a model output, so the COG compresses like one
            strip[0, :, c : c + w] = data[0, ov : ov + h, ov : ov + w] * np.float32(1e-4) + np.float32(0.5)
            if c + w == src.width:
                dst.write(strip, window=Window(0, r, src.width, h))
    _to_cog(tmp, p["out"])
    return _timed(start, cpu)


def work_c(p: dict) -> dict:
    """What a user writes by hand: one window at a time, read -> session.run -> crop -> write; COG at the end."""
    import rasterio
    from rasterio.windows import Window

    session = _session(p["model"])
    name = session.get_inputs()[0].name
    start, cpu = time.perf_counter(), time.process_time()
    tmp = p["out"] + ".tmp.tif"
    with rasterio.open(p["raster"]) as src, _open_output(tmp, src) as dst:
        ov = p["overlap"]
        for read, pad, core in halo_windows(src.height, src.width, p["tile"], ov):
            c, r, w, h = core
            x = _read_tile(src, read, pad).astype(np.float32)[None]
            y = session.run(None, {name: x})[0]
            dst.write(y[0, :, ov : ov + h, ov : ov + w], window=Window(c, r, w, h))
    _to_cog(tmp, p["out"])
    return _timed(start, cpu)


def work_d(p: dict) -> dict:
    import tilecast

    model = tilecast.Model.from_onnx(
        p["model"], input_tile_size=p["tile"], input_overlap_size=p["overlap"], output_bands={"score": "float32"},
        layout="NCHW", batch_size=p["batch"], blend=p["blend"],
    )
    start, cpu = time.perf_counter(), time.process_time()
    model.predict_image(p["raster"]).to_geotiff(p["out"], overwrite=True)
    return _timed(start, cpu)


WORKERS = {"a": work_a, "b": work_b, "c": work_c, "d": work_d}


def worker_main(spec: str) -> None:
    p = json.loads(spec)
    if p.get("profile"):
        import cProfile

        prof = cProfile.Profile()
        result = prof.runcall(WORKERS[p["variant"]], p)
        prof.dump_stats(p["profile"])
    else:
        result = WORKERS[p["variant"]](p)
    print(json.dumps(result))


# -------------------------------------------------------------------------------------------------- orchestrator


def _parse_only(text: str | None) -> tuple[set[str], set[str]]:
    if not text:
        return set(MODELS), {*VARIANTS, "d-cosine"}
    tokens = {t.strip() for t in text.split(",") if t.strip()}
    known = {*MODELS, *VARIANTS, "d-cosine"}
    unknown = tokens - known
    if unknown:
        raise SystemExit(f"--only: unknown {sorted(unknown)}; choose from {sorted(known)}")
    models = tokens & set(MODELS) or set(MODELS)
    variants = tokens - set(MODELS) or {*VARIANTS, "d-cosine"}
    if "d" in variants:
        variants.add("d-cosine")
    return models, variants


def _runs(models: set[str], variants: set[str]) -> list[tuple[str, str]]:
    """(model, variant) pairs to measure; the I/O limit does not depend on the model, so it is measured once."""
    runs = []
    if "b" in variants:
        runs.append(("-", "b"))
    for m in MODELS:
        if m not in models:
            continue
        for v in ("a", "c", "d", "d-cosine"):
            if v in variants and not (m == "io" and v == "d-cosine"):
                runs.append((m, v))
    return runs


def _measure(model_paths: dict[str, Path], raster: Path, out_dir: Path, model: str, variant: str,
             args: argparse.Namespace, tag: str = "") -> Measurement:
    out = out_dir / f"{model if model != '-' else 'io'}_{variant}{tag}.tif"
    params = {
        "variant": variant.split("-")[0], "model": str(model_paths.get(model, "")), "raster": str(raster),
        "out": str(out), "tile": args.tile, "overlap": args.overlap, "batch": args.batch_size,
        "blend": "cosine" if variant == "d-cosine" else "crop",
    }
    if args.profile and variant.startswith("d"):
        params["profile"] = str(out_dir / f"{model}_{variant}{tag}.prof")
    # The previous repeat's output goes before the timer starts: replacing it would make a writer pay for freeing
    # its pages in the page cache.
    out.unlink(missing_ok=True)
    return run_measured([str(Path(__file__).resolve()), "--worker", json.dumps(params)], timeout=args.timeout)


def _tilecast_version() -> str:
    """Which tilecast was measured: the imported package's folder and, in a git checkout, its commit."""
    import subprocess

    code = "import tilecast, os; print(os.path.dirname(tilecast.__file__))"
    where = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "-C", where or ".", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return f"{where} @ {commit or 'no git'}"


def _warm_cache(path: Path) -> None:
    """Read the file once so the first variant does not pay for a cold page cache."""
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, help="raster width = height in pixels (default 6144; 1024 with --quick)")
    ap.add_argument("--repeats", type=int, help="runs per variant; medians are reported (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--only", help="comma list of models (compute, io) and/or variants (a, b, c, d, d-cosine)")
    ap.add_argument("--big", action="store_true",
                    help="also predict a --big-size raster (generated, ~1 GB compressed) and check peak RSS < 1 GiB")
    ap.add_argument("--big-size", type=int, default=20000)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR, help="where generated rasters and models live")
    ap.add_argument("--out-dir", type=Path, default=OUT_DIR, help="where outputs and results.json go")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before a variant is killed")
    ap.add_argument("--profile", action="store_true", help="cProfile each tilecast run into --out-dir/*.prof")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0

    sys.stdout.reconfigure(line_buffering=True)  # keep the report in order with the progress lines on stderr
    size = args.size or (1024 if args.quick else 6144)
    repeats = args.repeats or (1 if args.quick else 3)
    models, variants = _parse_only(args.only)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    from models import build_compute_bound, build_io_bound, macs_per_pixel

    model_paths = {
        "compute": build_compute_bound(args.data_dir / "compute_bound.onnx"),
        "io": build_io_bound(args.data_dir / "io_bound.onnx"),
    }
    raster = make_raster(args.data_dir / f"bench_{size}x{size}x4_uint16.tif", size, progress=not args.quick)
    _warm_cache(raster)
    pixels = size * size
    tiles = math.ceil(size / args.tile) ** 2
    padded = args.tile + 2 * args.overlap
    print(f"raster {size} x {size} x 4 uint16 ({raster.stat().st_size / 2**20:.0f} MiB on disk), "
          f"{tiles} tiles of {args.tile} + 2 x {args.overlap} = {padded} px, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs, {repeats} repeat(s)")
    print(f"tilecast: {_tilecast_version()}")
    print(f"compute-bound model: {macs_per_pixel()} MACs/pixel "
          f"({macs_per_pixel() * padded**2 / args.tile**2:.0f} per raster pixel with the halo); "
          "I/O-bound model: 4 MACs/pixel (1x1 conv)")

    runs = _runs(models, variants)
    results: dict[tuple[str, str], list[Measurement]] = {r: [] for r in runs}
    loads_before = load_average()
    for rep in range(repeats):
        for model, variant in runs:
            m = _measure(model_paths, raster, args.out_dir, model, variant, args)
            results[(model, variant)].append(m)
            print(f"  [{rep + 1}/{repeats}] {model:7s} {variant:8s} {m.seconds:7.2f} s  "
                  f"{m.peak_rss / 2**20:6.0f} MiB  load {m.load:.1f}", file=sys.stderr, flush=True)

    summary = _report(results, pixels, models)
    summary.update(tilecast=_tilecast_version(), size=size, repeats=repeats, tile=args.tile, overlap=args.overlap,
                   batch_size=args.batch_size, macs_per_pixel=macs_per_pixel(), cpus=os.cpu_count(),
                   load_before=loads_before, load_after=load_average())
    print(f"load average (1 min) before/after: {loads_before:.1f} / {load_average():.1f} "
          f"on {os.cpu_count()} CPUs; other work on the machine shows up as noise")

    if args.big:
        big = make_raster(args.data_dir / f"bench_{args.big_size}x{args.big_size}x4_uint16.tif", args.big_size)
        m = _measure(model_paths, big, args.out_dir, "io", "d", args, tag=f"_{args.big_size}")
        ok = m.peak_rss < RSS_TARGET
        print(f"\nmemory: tilecast predict (I/O-bound model, crop) on {args.big_size} x {args.big_size} x 4 uint16: "
              f"peak RSS {m.peak_rss / 2**20:.0f} MiB (target < 1024 MiB: {'PASS' if ok else 'MISS'}), "
              f"{mpx_per_s(args.big_size**2, m.seconds):.2f} Mpx/s in {m.seconds:.1f} s")
        summary["big"] = {"size": args.big_size, "seconds": m.seconds, "peak_rss_mib": m.peak_rss / 2**20,
                          "mpx_s": mpx_per_s(args.big_size**2, m.seconds), "pass": ok}
        (args.out_dir / f"io_d_{args.big_size}.tif").unlink(missing_ok=True)

    (args.out_dir / "results.json").write_text(json.dumps(summary, indent=2))
    return 0  # targets are reported (PASS/MISS), never an error exit


def _report(results: dict[tuple[str, str], list[Measurement]], pixels: int, models: set[str]) -> dict:
    secs = {k: median([m.seconds for m in v]) for k, v in results.items()}
    rss = {k: max(m.peak_rss for m in v) for k, v in results.items()}
    cpu = {k: median([m.cpu for m in v]) for k, v in results.items()}
    rows = []
    print(f"\n{'model':8s} {'variant':36s} {'median s':>9s} {'Mpx/s':>8s} {'peak RSS':>9s} {'CPU s':>7s}  runs (s)")
    for (model, variant), ms in results.items():
        k = (model, variant)
        print(f"{model:8s} {LABELS[variant]:36s} {secs[k]:9.2f} {mpx_per_s(pixels, secs[k]):8.2f} "
              f"{rss[k] / 2**20:5.0f} MiB {cpu[k]:7.1f}  " + " ".join(f"{m.seconds:.2f}" for m in ms))
        rows.append({"model": model, "variant": variant, "median_s": secs[k], "mpx_s": mpx_per_s(pixels, secs[k]),
                     "peak_rss_mib": rss[k] / 2**20, "cpu_s": cpu[k], "runs_s": [m.seconds for m in ms],
                     "loads": [m.load for m in ms], "extra": [m.extra for m in ms]})
    print("(peak RSS: the largest of the repeats; CPU s: CPU seconds of all threads in the timed part)")
    for (model, variant), ms in results.items():
        if variant == "a" and ms and "sequential_s" in ms[0].extra:
            seq = median([m.extra["sequential_s"] for m in ms])
            streams = median([m.extra["streams_s"] for m in ms])
            print(f"{model:8s} a = the faster of: one session.run at a time with ONNX Runtime's defaults {seq:.2f} s; "
                  f"as tilecast calls it ({ms[0].extra['streams']} at a time) {streams:.2f} s")
    print()
    ratios = []
    all_pass = True
    for model in MODELS:
        if model not in models:
            continue
        for d in ("d", "d-cosine"):
            if (model, d) not in secs:
                continue
            parts = []
            for base in ("a", "b", "c"):
                key = (model, base) if base != "b" else ("-", "b")
                if key not in secs:
                    continue
                ratio = secs[key] / secs[(model, d)]  # throughput ratio d / base
                cpu_ratio = cpu[key] / cpu[(model, d)]
                text = f"{d.replace('d-cosine', 'd(cosine)')}/{base} = {ratio:.2f} (CPU {cpu_ratio:.2f})"
                target = TARGETS.get((model, d, base))
                if target is not None:
                    ok = ratio >= target
                    all_pass &= ok
                    text += f" (target >= {target:.2f}: {'PASS' if ok else 'MISS'})"
                parts.append(text)
                ratios.append({"model": model, "variant": d, "baseline": base, "ratio": ratio, "cpu_ratio": cpu_ratio,
                               "target": target})
            print(f"{model:8s} " + ";  ".join(parts))
    return {"rows": rows, "ratios": ratios, "all_pass": all_pass}


if __name__ == "__main__":
    sys.exit(main())
