"""``tilecast view``: map tiles predicted on demand, against batch ``predict`` over the same pixels.

One run measures, on a generated 4-band raster and the compute-bound network of ``bench/models.py`` (256 px tiles,
16 px overlap), through a real server on 127.0.0.1 and an HTTP client in the same process:

  cold   time to the first tile at the native zoom (a tile inside one block, fresh server, nothing cached), as a
         ratio to ``predict`` over that block's pixels (``predict_image(window=block).to_numpy()``). Target <= 1.5.
  warm   p50 / p95 of tiles asked again (rendered PNG cached), and of new tiles over computed blocks (warped and
         encoded from the block cache). Target: warm p95 <= 0.1 x cold.
  pan    every native-zoom tile over the scene, row by row, 6 requests in flight (a browser's connections per
         host), fresh server: tiles/s, and the ratio of batch ``predict`` time over the whole scene to the panning
         time (>= 1 means panning is as fast as the batch run). Target >= 0.7.

Repeats are interleaved and medians reported.

    .venv/bin/python bench/bench_view.py                       # 1536 x 1536, 3 repeats
    .venv/bin/python bench/bench_view.py --size 1024 --repeats 1     # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from common import DATA_DIR, load_average, make_raster, median
from models import build_compute_bound

TILE, OVERLAP, BATCH = 256, 16, 8
IN_FLIGHT = 6
WORKERS = 2


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def start_server(model, image: str):
    from tilecast.view.app import ViewServer
    from tilecast.view.session import ViewOptions, from_prediction

    options = ViewOptions(cache_dir=False, workers=WORKERS)
    return ViewServer(from_prediction(model.predict_image(image), options)).start()


def tile_inside_a_block(server) -> tuple[int, tuple[int, int, int], tuple[int, int, int, int]]:
    """A native-zoom tile that needs one block (the middle one if it can); returns block, tile and block window."""
    from rasterio.warp import transform as warp

    from tilecast.view.zooms import TMS, tile_window

    layer = server.view.main
    runner, grid, z = layer.runner, layer.grid, layer.zooms.native
    order = sorted(range(len(runner)), key=lambda i: abs(i - len(runner) // 2))
    for index in order:
        win = runner.window(index)
        cx, cy = grid.transform * (win.col_off + win.width / 2, win.row_off + win.height / 2)
        (lon,), (lat,) = warp(grid.crs, "EPSG:4326", [cx], [cy])
        t = TMS.tile(lon, lat, z)
        if runner.blocks_for(tile_window(grid, z, t.x, t.y)) == [index]:
            box = (int(win.row_off), int(win.row_off + win.height), int(win.col_off), int(win.col_off + win.width))
            return index, (z, t.x, t.y), box
    raise SystemExit("no native-zoom tile fits inside one block; use a larger --size")


def scene_tiles(server) -> list[tuple[int, int, int]]:
    from tilecast.view.zooms import TMS

    layer = server.view.main
    w, s, e, n = layer.tilejson("")["bounds"]
    z = layer.zooms.native
    return [(t.z, t.x, t.y) for t in TMS.tiles(w, s, e, n, [z])]


def get(client, url: str) -> float:
    start = time.perf_counter()
    r = client.get(url, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - start


def measure_cold(model, image: str, client) -> tuple[float, float]:
    """(cold first tile, predict over the same block), seconds."""
    server = start_server(model, image)
    try:
        _, (z, x, y), (r0, r1, c0, c1) = tile_inside_a_block(server)
        cold = get(client, f"{server.url}tiles/{z}/{x}/{y}.png")
        assert server.view.main.runner.stats.computed == 1
    finally:
        server.stop()
    start = time.perf_counter()
    model.predict_image(image, window=((r0, r1), (c0, c1))).to_numpy()
    return cold, time.perf_counter() - start


def measure_warm(model, image: str, client, n: int) -> tuple[list[float], list[float]]:
    """Latencies of a tile asked again, and of new tiles over blocks already computed."""
    server = start_server(model, image)
    try:
        _, (z, x, y), _ = tile_inside_a_block(server)
        url = f"{server.url}tiles/{z}/{x}/{y}.png"
        get(client, url)
        again = [get(client, url) for _ in range(n)]
        # the four children of the tile: same block, never rendered yet
        children = [(z + 1, 2 * x + dx, 2 * y + dy) for dx in (0, 1) for dy in (0, 1)]
        grand = [(z + 2, 2 * cx + dx, 2 * cy + dy) for _, cx, cy in children for dx in (0, 1) for dy in (0, 1)]
        fresh = [get(client, f"{server.url}tiles/{tz}/{tx}/{ty}.png") for tz, tx, ty in children + grand]
        assert server.view.main.runner.stats.computed == 1, "warm tiles must not compute"
    finally:
        server.stop()
    return again, fresh


def measure_pan(model, image: str, client) -> tuple[float, int]:
    """Seconds to fetch every native-zoom tile of the scene, row by row, IN_FLIGHT at a time."""
    server = start_server(model, image)
    try:
        tiles = scene_tiles(server)
        urls = [f"{server.url}tiles/{z}/{x}/{y}.png" for z, x, y in sorted(tiles, key=lambda t: (t[2], t[1]))]
        start = time.perf_counter()
        with ThreadPoolExecutor(IN_FLIGHT) as pool:
            list(pool.map(lambda u: get(client, u), urls))
        seconds = time.perf_counter() - start
        assert server.view.main.runner.stats.computed == len(server.view.main.runner)
    finally:
        server.stop()
    return seconds, len(urls)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1536)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warm", type=int, default=40, help="requests of the same tile per repeat")
    ap.add_argument("--workers", type=int, default=WORKERS, help="blocks computed at once (ViewOptions.workers)")
    args = ap.parse_args()
    globals()["WORKERS"] = args.workers
    warnings.simplefilter("ignore")

    import httpx

    import tilecast

    image = str(make_raster(DATA_DIR / f"view_{args.size}.tif", args.size))
    onnx = build_compute_bound(DATA_DIR / "compute_bound.onnx")
    model = tilecast.Model.from_onnx(onnx, input_tile_size=TILE, input_overlap_size=OVERLAP, batch_size=BATCH)
    model.predict_image(image, window=((0, 256), (0, 256))).to_numpy()  # warm the runtime up
    print(f"{args.size} x {args.size} px, 4 bands, compute-bound network, tile {TILE} + {OVERLAP}, "
          f"load {load_average():.2f}", file=sys.stderr)
    colds, blocks, agains, freshes, pans, batches = [], [], [], [], [], []
    ntiles = 0
    with httpx.Client() as client:
        for rep in range(args.repeats):
            cold, block = measure_cold(model, image, client)
            again, fresh = measure_warm(model, image, client, args.warm)
            pan, ntiles = measure_pan(model, image, client)
            start = time.perf_counter()
            model.predict_image(image).to_numpy()
            batch = time.perf_counter() - start
            colds.append(cold), blocks.append(block), pans.append(pan), batches.append(batch)
            agains.extend(again), freshes.extend(fresh)
            print(f"repeat {rep + 1}: cold {cold:.3f} s / block predict {block:.3f} s; pan {pan:.2f} s / "
                  f"batch {batch:.2f} s", file=sys.stderr)
    cold, block, pan, batch = median(colds), median(blocks), median(pans), median(batches)
    rows = [
        ("cold first tile / predict over its block", f"{cold:.3f} s / {block:.3f} s", f"{cold / block:.2f}x",
         "<= 1.5x"),
        ("warm tile asked again p50 / p95",
         f"{percentile(agains, 50) * 1e3:.1f} / {percentile(agains, 95) * 1e3:.1f} ms",
         f"p95 {percentile(agains, 95) / cold:.3f}x cold", "<= 0.1x"),
        ("warm new tile over cached blocks p50 / p95",
         f"{percentile(freshes, 50) * 1e3:.1f} / {percentile(freshes, 95) * 1e3:.1f} ms",
         f"p95 {percentile(freshes, 95) / cold:.3f}x cold", "<= 0.1x"),
        (f"panning: {ntiles} native tiles, {IN_FLIGHT} in flight", f"{pan:.2f} s ({ntiles / pan:.1f} tiles/s)",
         f"{batch / pan:.2f}x batch ({batch:.2f} s)", ">= 0.7x"),
    ]
    print("| measure | value | ratio | target |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nmedians of {args.repeats} repeat(s); {len(agains)} + {len(freshes)} warm requests; "
          f"stdev of cold {statistics.pstdev(colds):.3f} s")


if __name__ == "__main__":
    main()
