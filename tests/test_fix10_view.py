"""Fix round 10 of ``tilecast view``: the disk cache is bounded (least recently used blocks go first), the native
zoom of rasters spanning many latitudes, the input layer zoomed far out, and stopping a server in Jupyter."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

pytest.importorskip("rio_tiler")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import tilecast  # noqa: E402
from conftest import coord_image  # noqa: E402
from tilecast.errors import SpecError  # noqa: E402
from tilecast.view.diskcache import cache_files  # noqa: E402
from tilecast.view.session import ViewOptions, from_prediction  # noqa: E402
from tilecast.view.zooms import TMS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

MiB = 2**20


def old_blocks(root, folder: str, sizes: list[int], age_s: float) -> list:
    """Block files a past session left, last used ``age_s`` seconds ago (the oldest first)."""
    d = root / folder
    d.mkdir(parents=True)
    paths = []
    for i, size in enumerate(sizes):
        p = d / f"{i}.npy"
        np.save(p, np.zeros(size // 8, np.float64))
        t = time.time() - age_s - (len(sizes) - i)
        os.utime(p, (t, t))
        paths.append(p)
    return paths


def float_model() -> tilecast.Model:
    return tilecast.Model.from_callable(lambda x: x[:, :1] * 1.5, layout="NCHW", input_tile_size=64,
                                        output_bands={"v": "float64"})


def all_tiles(server, z: int) -> list[str]:
    w, s, e, n = server.view.main.tilejson("")["bounds"]
    return [server.url + f"tiles/{t.z}/{t.x}/{t.y}.png" for t in TMS.tiles(w, s, e, n, [z])]


def test_the_disk_cache_is_bounded_and_drops_the_least_recently_used_blocks(raster, tmp_path):
    """Symptom: ``~/.cache/tilecast/view`` was never pruned: every model, input and parameter ever viewed added
    its blocks (a float scene is gigabytes), across sessions, without bound. Now the root holds at most
    ``cache_size``: at start and as blocks are written, the blocks used longest ago are deleted; files that are not
    tilecast's own are never touched."""
    from test_view import serve

    root = tmp_path / "cache"
    stale = old_blocks(root, "a" * 24, [250_000] * 4, age_s=7200)  # a session two hours ago
    recent = old_blocks(root, "b" * 24, [250_000] * 2, age_s=600)
    old_blocks(root, "c" * 24, [250_000], age_s=9000)[0].parent.joinpath("0.npy")  # the oldest of all...
    os.utime(root / ("c" * 24) / "0.npy")  # ...but read a moment ago: kept
    (root / "notes.txt").write_text("mine")  # not tilecast's: never deleted
    (root / "mine").mkdir()
    np.save(root / "mine" / "0.npy", np.zeros(200_000))
    scene = raster(coord_image(600, 700, 2))
    with serve(float_model().predict_image(scene), cache_dir=root, cache_size="1MiB", block_size=128) as server:
        left = cache_files(root)
        assert sum(size for _, size, _ in left) <= 0.8 * MiB  # pruned at start, below the limit
        assert not any(p.exists() for p in stale) and all(p.exists() for p in recent)
        assert (root / ("c" * 24) / "0.npy").exists()
        assert (root / "notes.txt").exists() and (root / "mine" / "0.npy").exists()
        assert not (root / ("a" * 24)).exists()  # the folder it emptied is gone
        for url in all_tiles(server, server.view.main.zooms.native):
            assert httpx.get(url, timeout=60).status_code == 200
        runner = server.view.main.runner
        written = runner.stats.computed * 128 * 128 * 8
        assert written > 2 * MiB  # far more than the limit was computed...
        assert sum(size for _, size, _ in cache_files(root)) <= MiB  # ...and the cache stayed within it
        assert runner.store.disk.pruned > 0
    assert (root / "notes.txt").exists() and (root / "mine" / "0.npy").exists()


def test_a_block_read_back_from_disk_counts_as_used(raster, tmp_path):
    """LRU, not FIFO: a block a new session reads from disk is touched, so pruning keeps it over blocks unused."""
    from tilecast.view.blocks import BlockStore

    root = tmp_path / "cache"
    store = BlockStore(root / ("d" * 24), disk_bytes=None)
    for i in range(3):
        store.put(i, np.full((1, 64, 64), i, np.float64))
    for i, p in enumerate(sorted((root / ("d" * 24)).glob("*.npy"))):
        os.utime(p, (1000.0 + i, 1000.0 + i))  # 0 oldest, 2 newest
    fresh = BlockStore(root / ("d" * 24), disk_bytes=None)
    assert fresh.load(0)[0, 0, 0] == 0  # the oldest, read again
    size = (root / ("d" * 24) / "0.npy").stat().st_size
    BlockStore(root / ("d" * 24), disk_bytes=int(2 * size / 0.8))  # room for two blocks after pruning
    assert sorted(p.name for p in (root / ("d" * 24)).glob("*.npy")) == ["0.npy", "2.npy"]


def test_cache_size_is_checked_and_zero_means_no_limit(raster, tmp_path):
    with pytest.raises(SpecError, match="cache_size"):
        ViewOptions(cache_size="lots")
    assert ViewOptions(cache_size="2GiB").cache_size == 2 * 2**30
    assert ViewOptions().cache_size == 4 * 2**30
    from tilecast.cli.view import _view_options

    opts = {"budget": 4, "no_cache": False, "cache_dir": None, "classes": None, "view_band": None, "colormap": None,
            "rescale": None, "rgb": None, "basemap": None, "block_size": None, "cache_size": "0"}
    assert _view_options(opts).cache_size is None
    scene = raster(coord_image(100, 120, 2))
    view = from_prediction(float_model().predict_image(scene), ViewOptions(cache_dir=tmp_path, cache_size=None))
    try:
        assert view.main.runner.store.disk.max_bytes is None
    finally:
        view.close()


def ground_pixel_m(grid, lon: float, lat: float) -> float:
    """Square root of the ground area (m², on the ellipsoid) of the grid's pixel at ``lon, lat``."""
    from pyproj import Geod, Transformer

    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    col, row = ~grid.transform * to_grid.transform(lon, lat)
    pts = [to_ll.transform(*(grid.transform * p)) for p in ((col, row), (col + 1, row), (col + 1, row + 1),
                                                              (col, row + 1))]
    area, _ = Geod(ellps="WGS84").polygon_area_perimeter([p[0] for p in pts], [p[1] for p in pts])
    return abs(area) ** 0.5


def closest_zoom(metres: float, lat: float) -> int:
    """The web-mercator zoom whose ground pixel at ``lat`` is closest (in ratio) to ``metres``."""
    import math

    return min(range(25), key=lambda z: abs(math.log(TMS.matrix(z).cellSize * math.cos(math.radians(lat)) / metres)))


@pytest.mark.parametrize("name, crs, transform, shape, old", [
    ("lat/lon 40-80N", "EPSG:4326", (0.01, 0, 10, 0, -0.01, 80), (4000, 4000), 6),
    ("lat/lon equator to 80N", "EPSG:4326", (0.01, 0, 10, 0, -0.01, 80), (8000, 2000), 6),
    ("lat/lon world", "EPSG:4326", (0.1, 0, -180, 0, -0.1, 90), (1800, 3600), 0),
    ("polar stereographic around the south pole", "EPSG:3031", (500, 0, -2e6, 0, -500, 2e6), (8000, 8000), 5),
    ("polar stereographic, Greenland", "EPSG:3413", (150, 0, -650000, 0, -150, -650000), (18000, 10000), 8),
    ("UTM", "EPSG:32633", (10, 0, 500000, 0, -10, 5000000), (1024, 1024), 13),
    ("lat/lon 60N, small", "EPSG:4326", (1e-4, 0, 10, 0, -1e-4, 60.05), (1024, 1024), 13),
])
def test_the_native_zoom_is_the_closest_at_the_rasters_centre(name, crs, transform, shape, old):
    """Symptom: the native zoom came from GDAL's suggested warp of the whole raster to web mercator (as rio-tiler's
    maxzoom), whose diagonal web mercator stretches towards the poles: a raster spanning many latitudes got a
    level too low at its centre (lat/lon from 40 to 80N: 6 where 7 matches its 790 m pixels at 60N; the world at
    0.1 degree: 0), so the map opened too far out and ``maxzoom`` stopped a level early. ``old``: what it was."""
    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.warp import transform as warp

    from tilecast.sources.base import Grid
    from tilecast.view.zooms import LATITUDE_LIMIT, lonlat_extent, native_zoom

    grid = Grid(CRS.from_user_input(crs), Affine(*transform), shape)
    (lon,), (lat,) = warp(grid.crs, "EPSG:4326", *([v] for v in grid.transform * (shape[1] / 2, shape[0] / 2)))
    if abs(lat) >= LATITUDE_LIMIT:  # a pole at the centre: the centre of what web mercator shows of the raster
        w, s, e, n = lonlat_extent(grid)
        lon, lat = (w + e) / 2, (s + n) / 2
    expected = closest_zoom(ground_pixel_m(grid, lon, lat), lat)
    assert native_zoom(grid) == expected, (name, old)


def test_the_input_layer_declares_every_zoom_it_serves(raster):
    """The page and the widget ask for the input layer's tiles at every zoom, and the server draws them; its
    TileJSON said ``minzoom`` 8 levels below native, so a TileJSON client (MapLibre, QGIS) showed no input when
    zoomed out further."""
    import io

    from PIL import Image

    from test_view import serve

    scene = raster(coord_image(300, 400, 3))
    with serve(float_model().predict_image(scene)) as server:
        layer = server.view.layers["input"]
        tj = httpx.get(server.url + "input/tilejson.json").json()
        assert tj["minzoom"] == layer.zooms.minzoom == 0
        lon, lat = tj["center"][:2]
        t = TMS.tile(lon, lat, layer.zooms.native - 9)
        r = httpx.get(server.url + f"input/tiles/{t.z}/{t.x}/{t.y}.png", timeout=60)
        assert r.status_code == 200
        assert (np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3] > 0).any()


def test_stop_returns_at_once_while_a_block_is_computing(raster, monkeypatch):
    """Symptom: ``ViewServer.stop()`` (what ``ExploreMap.close()``, garbage collection and interpreter exit call in
    Jupyter) waited for the blocks being computed, so with a slow model closing a map froze the notebook cell until
    the block was done (minutes on a CPU). It now returns at once; the block ends in the background."""
    import contextlib
    import importlib
    import threading

    from tilecast.view.app import ViewServer

    blocks = importlib.import_module("tilecast.view.blocks")  # tilecast.view is also a function's name

    started, release = threading.Event(), threading.Event()
    real = blocks.compute_chunk

    def slow(*args, **kwargs):
        started.set()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(blocks, "compute_chunk", slow)
    scene = raster(coord_image(300, 300, 2))
    server = ViewServer(from_prediction(float_model().predict_image(scene), ViewOptions(cache_dir=False))).start()
    try:
        tj = httpx.get(server.url + "tilejson.json").json()
        t = TMS.tile(*tj["center"][:2], server.view.main.zooms.native)

        def ask() -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png", timeout=90)

        threading.Thread(target=ask, daemon=True).start()
        assert started.wait(30)
        start = time.monotonic()
        server.stop()
        took = time.monotonic() - start
    finally:
        release.set()
    assert took < 5, took
    assert not server.thread.is_alive()
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "config.json", timeout=5)
