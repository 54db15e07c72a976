"""``tilecast view``: map tiles computed on the model's grid, cached, shared, guarded; against a real server."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("rio_tiler")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
PIL = pytest.importorskip("PIL.Image")

import rasterio  # noqa: E402
from rio_tiler.io import Reader  # noqa: E402

import tilecast  # noqa: E402
from conftest import coord_image  # noqa: E402
from tilecast.errors import NotGeoreferencedError  # noqa: E402
from tilecast.view.app import ViewServer  # noqa: E402
from tilecast.view.errors import PortInUseError, UnknownColormapError  # noqa: E402
from tilecast.view.session import ViewOptions, from_prediction, from_raster  # noqa: E402
from tilecast.view.style import RangeStyle, zoom_in_png  # noqa: E402
from tilecast.view.zooms import TMS, tile_window  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

H, W = 600, 700
TILE, OVERLAP = 64, 4
CLASSES = {1: "water", 2: "forest", 3: "crops", 4: "urban", 5: "bare"}
COLORS = {1: (0, 90, 200), 2: (20, 140, 40), 3: (230, 200, 60), 4: (200, 30, 30), 5: (150, 150, 150)}


def classify(x: np.ndarray) -> np.ndarray:
    """Classes from the pixel's own coordinates (band 0 = row, band 1 = col): stripes that cross tiles and blocks."""
    return ((x[:, 0] // 37 + x[:, 1] // 53) % 5 + 1).astype("uint8")


class Counting:
    """A callable model that counts its calls (thread-safe) and can be slowed down."""

    def __init__(self, fn, delay: float = 0.0) -> None:
        self.fn, self.delay, self.calls = fn, delay, 0
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return self.fn(x)[:, None]


def class_model(counter: Counting, **kw) -> tilecast.Model:
    band = {"landcover": {"type": "uint8", "classes": CLASSES, "colors": {k: list(v) for k, v in COLORS.items()}}}
    return tilecast.Model.from_callable(counter, layout="NCHW", input_tile_size=TILE, input_overlap_size=OVERLAP,
                                        output_bands=band, **kw)


@pytest.fixture
def scene(raster):
    return raster(coord_image(H, W, 2))


def serve(prediction, **options) -> ViewServer:
    options.setdefault("cache_dir", False)
    options.setdefault("block_size", 128)
    return ViewServer(from_prediction(prediction, ViewOptions(**options))).start()


def get_png(url: str) -> np.ndarray:
    r = httpx.get(url, timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    return np.asarray(PIL.open(io.BytesIO(r.content)).convert("RGBA"))


def scene_tiles(path: str, z: int) -> list:
    with rasterio.open(path) as ds:
        from rasterio.warp import transform_bounds

        w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds)
    return list(TMS.tiles(w, s, e, n, [z]))


def test_tilejson_and_native_tiles_equal_the_batch_prediction(scene, tmp_path):
    counter = Counting(classify)
    model = class_model(counter)
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene)) as server:
        tj = httpx.get(server.url + "tilejson.json").json()
        assert tj["tilejson"] == "3.0.0" and tj["name"] == "prediction"
        (url,) = tj["tiles"]
        assert url.startswith(server.url + "tiles/{z}/{x}/{y}.png?v=")  # the version keeps browser caches honest
        assert tj["minzoom"] <= tj["center"][2] <= tj["maxzoom"]
        with rasterio.open(scene) as ds:
            from rasterio.warp import transform_bounds

            assert np.allclose(tj["bounds"], transform_bounds(ds.crs, "EPSG:4326", *ds.bounds), atol=1e-9)
        native = server.view.main.zooms.native
        assert tj["maxzoom"] > native
        tiles = scene_tiles(scene, native)
        assert len(tiles) >= 4
        seen = set()
        with Reader(str(ref)) as reader:
            for t in tiles:
                got = get_png(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
                img = reader.tile(t.x, t.y, t.z, resampling_method="nearest", reproject_method="nearest")
                values, mask = img.array.data[0], np.ma.getmaskarray(img.array)[0]
                assert np.array_equal(got[..., 3] == 0, mask)
                for k, rgb in COLORS.items():
                    where = (values == k) & ~mask
                    assert (got[where][:, :3] == rgb).all()
                    seen.add(k) if where.any() else None
        assert seen == set(CLASSES)  # every class was on some tile: the comparison covered them all


def test_blended_float_tiles_equal_the_batch_prediction(scene, tmp_path):
    """Blending (cosine over the overlap) assembles blocks bit-identical to the batch run, so tiles match too."""

    def smooth(x):
        return np.sin(x[:, 0] / 23.0) * np.cos(x[:, 1] / 31.0)

    model = tilecast.Model.from_callable(lambda x: smooth(x)[:, None], layout="NCHW", input_tile_size=TILE,
                                         input_overlap_size=OVERLAP, blend="cosine",
                                         output_bands={"score": "float32"})
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene), rescale=(-1.0, 1.0), colormap="magma") as server:
        style = RangeStyle("magma", [(-1.0, 1.0)])
        native = server.view.main.zooms.native
        with Reader(str(ref)) as reader:
            for t in scene_tiles(scene, native)[:6]:
                got = httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png").content
                img = reader.tile(t.x, t.y, t.z, resampling_method="nearest", reproject_method="nearest")
                assert np.array_equal(np.asarray(PIL.open(io.BytesIO(got))),
                                      np.asarray(PIL.open(io.BytesIO(style.render(img)))))


def test_fix_input_proj_tiles_are_on_the_model_grid(scene, tmp_path):
    """With fix_input_proj the blocks are on the model's grid (here 15 m in EPSG:3035), as in the batch run."""
    model = class_model(Counting(classify), crs="EPSG:3035", resolution=(15.0, 15.0), fix_input_proj=True,
                        resampling="nearest")
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene)) as server:
        layer = server.view.main
        assert layer.grid.crs.to_epsg() == 3035 and layer.grid.resolution == (15.0, 15.0)
        with Reader(str(ref)) as reader:
            for t in scene_tiles(str(ref), layer.zooms.native)[:4]:
                got = get_png(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
                img = reader.tile(t.x, t.y, t.z, resampling_method="nearest", reproject_method="nearest")
                values, mask = img.array.data[0], np.ma.getmaskarray(img.array)[0]
                assert np.array_equal(got[..., 3] == 0, mask)
                for k, rgb in COLORS.items():
                    assert (got[(values == k) & ~mask][:, :3] == rgb).all()


def test_second_request_comes_from_the_cache_and_a_restart_reuses_the_disk(scene, tmp_path):
    counter = Counting(classify)
    model = class_model(counter)
    cache = tmp_path / "cache"
    with serve(model.predict_image(scene), cache_dir=cache) as server:
        t = scene_tiles(scene, server.view.main.zooms.native)[0]
        url = server.url + f"tiles/{t.z}/{t.x}/{t.y}.png"
        first = httpx.get(url).content
        calls, stats = counter.calls, server.view.main.runner.stats
        assert calls > 0 and stats.computed > 0
        assert httpx.get(url).content == first
        assert counter.calls == calls  # no model call for the second request
        computed = stats.computed
    assert list(cache.rglob("*.npy"))
    with serve(model.predict_image(scene), cache_dir=cache) as server:
        assert httpx.get(url.replace(url.split("/tiles")[0], server.url.rstrip("/"))).content == first
        assert counter.calls == calls  # the blocks came from disk
        assert server.view.main.runner.stats.disk_hits == computed


def test_concurrent_requests_for_one_block_make_one_model_call(scene):
    counter = Counting(classify, delay=0.5)
    model = class_model(counter, batch_size=8)
    with serve(model.predict_image(scene), block_size=128) as server:  # 2 x 2 tiles: one model call per block
        runner = server.view.main.runner
        z = server.view.main.zooms.maxzoom
        # two small tiles inside the first block (its pixels 10..40 and 80..110 on the diagonal)
        with rasterio.open(scene) as ds:
            from rasterio.warp import transform as warp

            lons, lats = warp(ds.crs, "EPSG:4326", *zip(ds.xy(20, 20), ds.xy(100, 100), strict=True))
        tiles = [TMS.tile(lon, lat, z) for lon, lat in zip(lons, lats, strict=True)]
        assert tiles[0] != tiles[1]
        for t in tiles:
            assert runner.blocks_for(tile_window(runner.profile.grid, t.z, t.x, t.y)) == [0]
        urls = [server.url + f"tiles/{t.z}/{t.x}/{t.y}.png" for t in tiles]
        with ThreadPoolExecutor(2) as pool:
            responses = list(pool.map(lambda u: httpx.get(u, timeout=60), urls))
        assert [r.status_code for r in responses] == [200, 200]
        assert counter.calls == 1
        assert runner.stats.computed == 1 and runner.stats.shared >= 1


def test_below_minzoom_no_model_call(scene):
    counter = Counting(classify)
    model = class_model(counter)
    with serve(model.predict_image(scene), block_size=64, budget=1) as server:
        layer = server.view.main
        tj = httpx.get(server.url + "tilejson.json").json()
        assert tj["minzoom"] == layer.zooms.minzoom > 0 and tj["block_budget"] == 1
        low = scene_tiles(scene, tj["minzoom"] - 1)
        for t in low:
            r = httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
            assert r.status_code == 200 and r.content == zoom_in_png()  # nothing computed yet: "zoom in"
        assert counter.calls == 0
        for t in scene_tiles(scene, layer.zooms.native)[:3]:  # compute a few blocks where the user zoomed in
            httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
        calls = counter.calls
        assert calls > 0
        shown = [get_png(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png") for t in low]
        assert counter.calls == calls  # zoomed out again: served from what exists, still no model call
        drawn = np.concatenate([s[..., 3].ravel() for s in shown])
        assert (drawn == 255).any() and (drawn == 0).any()  # computed blocks shown, the rest left transparent
        far = scene_tiles(scene, layer.zooms.native - 4)  # the scene in a few dozen pixels
        covered = max(len(layer.runner.blocks_for(tile_window(layer.grid, t.z, t.x, t.y))) for t in far)
        assert covered > 64  # more blocks than are looked at one by one: only the computed ones are read
        assert any(get_png(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")[..., 3].any() for t in far)
        assert counter.calls == calls
        cfg = httpx.get(server.url + "config.json").json()
        assert cfg["layers"][0]["guarded"] and cfg["layers"][0]["minzoom"] == tj["minzoom"]


def test_a_request_that_went_away_starts_no_block(scene):
    counter = Counting(classify)
    view = from_prediction(class_model(counter).predict_image(scene), ViewOptions(cache_dir=False, block_size=128))
    try:
        layer = view.main
        t = scene_tiles(scene, layer.zooms.native)[0]

        async def gone() -> bool:
            return False

        loop = asyncio.new_event_loop()  # not asyncio.run: it would leave this thread without a current loop
        try:
            assert loop.run_until_complete(layer.tile(t.z, t.x, t.y, gone)) is None
        finally:
            loop.close()
        assert counter.calls == 0 and layer.runner.stats.computed == 0
    finally:
        view.close()


def test_queued_blocks_are_dropped_when_their_requests_go_away(scene):
    """Fast panning: tiles scrolled away before their blocks started cost no model call."""
    counter = Counting(classify, delay=2.0)  # long enough for the server to see the requests go
    model = class_model(counter)
    with serve(model.predict_image(scene), block_size=64) as server:  # one tile per block
        runner = server.view.main.runner
        z = server.view.main.zooms.maxzoom
        with rasterio.open(scene) as ds:
            from rasterio.warp import transform as warp

            cells = [(32 + 64 * i, 32 + 64 * j) for i in range(3) for j in range(3)]
            lons, lats = warp(ds.crs, "EPSG:4326", *zip(*(ds.xy(r, c) for r, c in cells), strict=True))
        urls = [server.url + f"tiles/{t.z}/{t.x}/{t.y}.png" for t in (TMS.tile(lo, la, z) for lo, la in
                                                                         zip(lons, lats, strict=True))]

        def scrolled_away(url: str) -> None:
            with pytest.raises(httpx.ReadTimeout):
                httpx.get(url, timeout=httpx.Timeout(60, read=0.4))

        with ThreadPoolExecutor(len(urls)) as pool:
            list(pool.map(scrolled_away, urls))
        time.sleep(4.5)  # the two blocks that had started finish; nothing else may start
        assert runner.stats.dropped >= len(urls) - 2 - 1
        assert runner.stats.computed <= 3 and counter.calls == runner.stats.computed
        again = get_png(urls[-1])  # asked for again, a dropped block is computed then
        assert again[..., 3].any() and runner.stats.computed <= 4


def test_point_values_and_input_layer(scene):
    counter = Counting(classify)
    with serve(class_model(counter).predict_image(scene)) as server:
        with rasterio.open(scene) as ds:
            from rasterio.warp import transform as warp

            (lon,), (lat,) = warp(ds.crs, "EPSG:4326", *([v] for v in ds.xy(300, 350)))
        before = httpx.get(server.url + "point", params={"lon": lon, "lat": lat}).json()
        assert before["prediction"] == {"computed": False}  # asking never runs the model
        assert counter.calls == 0
        assert before["input"]["values"] == [300.0]  # two bands: the input is shown as grey, band 1 (= row)
        t = TMS.tile(lon, lat, server.view.main.zooms.native)
        httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
        after = httpx.get(server.url + "point", params={"lon": lon, "lat": lat}).json()
        expected = int(classify(np.array([[[[300.0]], [[350.0]]]]))[0, 0, 0])
        assert after["prediction"]["values"] == [expected] and after["prediction"]["class"] == CLASSES[expected]
        itj = httpx.get(server.url + "input/tilejson.json").json()
        assert itj["tiles"][0].startswith(server.url + "input/tiles/{z}/{x}/{y}.png?v=")
        png = get_png(itj["tiles"][0].format(z=t.z, x=t.x, y=t.y))
        assert (png[..., 3] == 255).any()
        assert httpx.get(server.url + "nope/tilejson.json").status_code == 404


def test_existing_raster_with_its_colour_table(scene, tmp_path):
    model = class_model(Counting(classify))
    out = model.predict_image(scene).to_geotiff(tmp_path / "landcover.tif")
    with ViewServer(from_raster(out)).start() as server:
        cfg = httpx.get(server.url + "config.json").json()
        legend = cfg["layers"][0]["legend"]
        assert [(i["value"], i["name"]) for i in legend["items"]] == sorted(CLASSES.items())
        assert legend["items"][0]["color"] == "#{:02x}{:02x}{:02x}".format(*COLORS[1])
        t = scene_tiles(scene, server.view.main.zooms.native)[0]
        png = get_png(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
        colours = {tuple(c) for c in png[png[..., 3] == 255][:, :3]}
        assert colours and colours <= set(COLORS.values())


def test_errors(scene, raster, tmp_path):
    plain = raster(np.zeros((1, 32, 32), dtype="uint8"), crs=None, transform=rasterio.Affine.identity())
    with pytest.raises(NotGeoreferencedError, match="cannot be placed on a map"):
        from_raster(plain)
    with pytest.raises(UnknownColormapError, match="unknown colormap 'nope'"):
        from_prediction(tilecast.Model.from_callable(lambda x: x[:, :1], layout="NCHW", input_tile_size=TILE,
                                                     output_bands={"v": "float32"}).predict_image(scene),
                        ViewOptions(colormap="nope", cache_dir=False))
    with ViewServer(from_raster(scene)).start() as server, pytest.raises(PortInUseError, match="--port"):
        ViewServer(from_raster(scene), port=server.port)
    too_big = tilecast.Model.from_callable(lambda x: x[:, :1] + 1000, layout="NCHW", input_tile_size=TILE,
                                           output_bands={"v": "uint8"})
    with serve(too_big.predict_image(scene)) as server:
        t = scene_tiles(scene, server.view.main.zooms.native)[0]
        r = httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png")
        assert r.status_code == 500 and r.json()["error"].startswith("CastError")


def run_cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from tilecast.cli.view import view; view()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))


def test_cli_errors(scene, raster):
    r = run_cli(scene, "--colormap", "nope", "--no-browser", "--port", "0")
    assert r.returncode == 1 and "UnknownColormapError: unknown colormap 'nope'" in r.stderr
    plain = raster(np.zeros((1, 32, 32), dtype="uint8"), crs=None, transform=rasterio.Affine.identity())
    r = run_cli(plain, "--no-browser", "--port", "0")
    assert r.returncode == 1 and "NotGeoreferencedError" in r.stderr and "Traceback" not in r.stderr
    with ViewServer(from_raster(scene)).start() as server:
        r = run_cli(scene, "--no-browser", "--port", str(server.port))
    assert r.returncode == 1 and "PortInUseError" in r.stderr and "Traceback" not in r.stderr


def test_cli_serves_a_model_over_a_scene(scene, tmp_path):
    from onnx_models import linear_1x1

    onnx = linear_1x1(tmp_path / "m.onnx", [1.0, 0.0])
    cmd = [sys.executable, "-c", "from tilecast.cli.view import view; view()", scene, "--model", onnx, "--tile", "64",
           "--output-band", "y:float32", "--no-browser", "--port", "0", "--no-cache", "-q"]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:") and url.endswith("/")
            tj = httpx.get(url + "tilejson.json", timeout=30).json()
            t = scene_tiles(scene, tj["maxzoom"] - 4)[0]
            assert get_png(url + f"tiles/{t.z}/{t.x}/{t.y}.png")[..., 3].any()
            stats = httpx.get(url + "stats.json").json()
            assert stats["prediction"]["computed"] >= 1 and stats["rescale"]["prediction"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def test_explore_widget_is_backed_by_the_server_and_stops_on_close(scene):
    pytest.importorskip("ipyleaflet")
    from tilecast.view import explore

    m = explore(class_model(Counting(classify)).predict_image(scene), cache_dir=False)
    urls = [layer.url for layer in m.layers]
    assert [u.split("?")[0] for u in urls] == [m.url + "input/tiles/{z}/{x}/{y}.png", m.url + "tiles/{z}/{x}/{y}.png"]
    assert httpx.get(m.url + "tilejson.json").status_code == 200
    m.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(m.url + "tilejson.json", timeout=5)


def test_a_missing_extra_is_named(scene):
    code = ("import sys; sys.modules['rio_tiler'] = None\n"
            "from tilecast.cli.view import view; view()")
    r = subprocess.run([sys.executable, "-c", code, scene, "--no-browser"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "MissingExtraError" in r.stderr and "tilecast[view]" in r.stderr
