"""Review 9 of ``tilecast view``: failing tiles, the page in a real browser, ports, shutdown, grids and pixels."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("rio_tiler")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
PIL = pytest.importorskip("PIL.Image")

import rasterio  # noqa: E402
from rasterio.warp import transform as warp  # noqa: E402
from rasterio.warp import transform_bounds  # noqa: E402

import tilecast  # noqa: E402
from conftest import coord_image  # noqa: E402
from test_view import serve  # noqa: E402
from tilecast.view.app import ViewServer  # noqa: E402
from tilecast.view.errors import PortInUseError  # noqa: E402
from tilecast.view.session import ViewOptions, from_prediction, from_raster  # noqa: E402
from tilecast.view.zooms import TMS  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")

H, W, TILE = 400, 480, 64


def lonlat(path: str, row: int, col: int) -> tuple[float, float]:
    with rasterio.open(path) as ds:
        (lon,), (lat,) = warp(ds.crs, "EPSG:4326", *([v] for v in ds.xy(row, col)))
    return lon, lat


def tile_url(server: ViewServer, path: str, row: int, col: int, z: int | None = None) -> str:
    t = TMS.tile(*lonlat(path, row, col), server.view.main.zooms.native if z is None else z)
    return server.url + f"tiles/{t.z}/{t.x}/{t.y}.png"


def png(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(PIL.open(io.BytesIO(r.content)).convert("RGBA"))


def failing_model(limit: int) -> tilecast.Model:
    """Band 0 of the input is the row: the model fails (a Python error, not a tilecast one) below row ``limit``."""

    def fn(x: np.ndarray) -> np.ndarray:
        if x[:, 0].max() >= limit:
            raise ValueError(f"rows past {limit} are not supported")
        return x[:, :1] / 100.0

    return tilecast.Model.from_callable(fn, layout="NCHW", input_tile_size=TILE, output_bands={"v": "float32"})


def test_a_python_error_in_the_model_answers_its_message_and_the_other_tiles_still_come(raster):
    """Symptom: a model that is a Python function raising ValueError made the tile answer a bare "Internal Server
    Error" (text, no message, a traceback in the log): the page could not say why, only tilecast's own errors were
    turned into a message."""
    scene = raster(coord_image(H, W, 2))
    with serve(failing_model(256).predict_image(scene)) as server:
        good, bad = tile_url(server, scene, 20, 20), tile_url(server, scene, H - 20, W - 20)
        assert png(httpx.get(good, timeout=60))[..., 3].any()
        r = httpx.get(bad, timeout=60)
        assert r.status_code == 500 and r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "ValueError: rows past 256 are not supported"
        assert png(httpx.get(good, timeout=60))[..., 3].any()  # the server goes on
        stats = httpx.get(server.url + "stats.json").json()
        assert stats["errors"][-1]["error"] == r.json()["error"] and stats["errors"][-1]["layer"] == "prediction"


def test_a_port_outside_0_65535_is_a_clear_error(raster):
    """Symptom: ``--port 70000`` (or ``port=-1`` in Python) ended in an OverflowError traceback from socket."""
    scene = raster(coord_image(40, 40, 1))
    for port in (70000, -1):
        view = from_raster(scene)
        try:
            with pytest.raises(PortInUseError, match="0-65535"):
                ViewServer(view, port=port)
        finally:
            view.close()
    r = subprocess.run([sys.executable, "-c", "from tilecast.cli.view import view; view()", scene, "--no-browser",
                        "--port", "70000"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--port" in r.stderr and "Traceback" not in r.stderr


def open_page(url: str, profile, wait_for: str) -> dict:
    """Load the map page in headless Chromium with no network but ``url``, wait for ``wait_for`` (a JS
    expression), and return what the page shows and what went wrong in it (console errors, refused requests)."""
    from test_view_browser import browser_page

    console: list[str] = []
    with browser_page(url, profile) as (page, refused):
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.wait_for_load_state("networkidle", timeout=120_000)
        page.wait_for_function(wait_for, timeout=60_000)
        page.wait_for_timeout(300)
        errors = page.locator("#errors")
        return {"console": console, "refused": refused, "legend": page.locator("#legend").inner_text(),
                "errors": errors.inner_text(), "errors_hidden": errors.is_hidden()}


ALL_LOADED = "() => !document.querySelector('.leaflet-tile:not(.leaflet-tile-loaded)')"


def test_page_of_a_float_output_loads_clean_and_its_legend_shows_the_range_taken_from_data(raster, tmp_path):
    """Symptom: without --rescale the legend of a float output said "from data ... from data" for good: the page
    drew it from config.json once, before the first tile fixed the range."""
    from test_view_browser import browser_or_skip

    browser_or_skip()
    scene = raster(coord_image(H, W, 2))
    model = tilecast.Model.from_callable(lambda x: x[:, :1] / 100.0, layout="NCHW", input_tile_size=TILE,
                                         output_bands={"v": "float32"})
    with serve(model.predict_image(scene)) as server:
        facts = open_page(server.url, tmp_path / "profile",
                          "() => !document.getElementById('legend').textContent.includes('from data')")
        lo, hi = httpx.get(server.url + "stats.json").json()["rescale"]["prediction"][0]
    assert facts["console"] == [] and facts["refused"] == []
    assert f"{lo:.3g}" in facts["legend"] and f"{hi:.3g}" in facts["legend"] and 0 <= lo < hi <= H / 100
    assert facts["errors_hidden"]


def test_page_says_why_tiles_failed(raster, tmp_path):
    """Symptom: tiles whose model run failed stayed blank, and nothing on the page said why."""
    from test_view_browser import browser_or_skip

    browser_or_skip()
    scene = raster(coord_image(H, W, 2))
    with serve(failing_model(0).predict_image(scene)) as server:
        facts = open_page(server.url, tmp_path / "profile", "() => !document.getElementById('errors').hidden")
    assert "ValueError: rows past 0 are not supported" in facts["errors"]
    assert facts["console"] and all("500" in line for line in facts["console"]), facts["console"]


CLASSES = {1: "water", 2: "forest", 3: "crops"}
COLORS = {1: (0, 90, 200), 2: (20, 140, 40), 3: (230, 200, 60)}


def stripes(x: np.ndarray) -> np.ndarray:
    """Classes from the pixel's own coordinates (band 0 = row, band 1 = col)."""
    return (x[:, 0] // 50 + x[:, 1] // 60) % 3 + 1


def test_a_class_band_that_is_not_the_first_output_keeps_its_classes_and_colours(raster, tmp_path):
    """Symptom: ``--band landcover`` on a model whose class band comes after a score band showed it with viridis
    and a value ramp: only the first output band's declared classes and colours were looked at."""
    from rio_tiler.io import Reader

    scene = raster(coord_image(H, W, 2))
    bands = {"score": "float32",
             "landcover": {"type": "uint8", "classes": CLASSES, "colors": {k: list(v) for k, v in COLORS.items()}}}
    model = tilecast.Model.from_callable(lambda x: np.stack([x[:, 0] / 100.0, stripes(x)], axis=1), layout="NCHW",
                                         input_tile_size=TILE, output_bands=bands)
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene), band="landcover") as server:
        legend = httpx.get(server.url + "config.json").json()["layers"][0]["legend"]
        assert legend["kind"] == "classes"
        assert [(i["value"], i["name"], i["color"]) for i in legend["items"]] == [
            (v, CLASSES[v], "#{:02x}{:02x}{:02x}".format(*COLORS[v])) for v in CLASSES]
        seen = set()
        with Reader(str(ref)) as reader:
            for t in TMS.tiles(*transform_bounds(reader.dataset.crs, "EPSG:4326", *reader.dataset.bounds),
                               [server.view.main.zooms.native]):
                got = png(httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png", timeout=60))
                img = reader.tile(t.x, t.y, t.z, indexes=2, resampling_method="nearest", reproject_method="nearest")
                values, mask = img.array.data[0], np.ma.getmaskarray(img.array)[0]
                assert np.array_equal(got[..., 3] == 0, mask)
                for k, rgb in COLORS.items():
                    where = (values == k) & ~mask
                    assert (got[where][:, :3] == rgb).all()
                    seen.add(k) if where.any() else None
        assert seen == set(CLASSES)


def test_explore_options_are_checked_and_keywords_beside_options_are_kept(raster):
    """Symptoms: ``explore(x, options=opts, colormap="magma")`` silently dropped the colormap; a misspelt keyword was a
    bare TypeError; ``classes=["a", "b"]`` (names for values 0, 1, as --classes takes them) failed inside the style
    with a ValueError; ``rescale=(1, 0)`` was taken as it was."""
    pytest.importorskip("ipyleaflet")
    from tilecast.errors import SpecError
    from tilecast.view import explore

    scene = raster(coord_image(40, 40, 1))
    with pytest.raises(SpecError, match=r"no option 'colourmap'.*colormap"):
        explore(scene, colourmap="magma")
    with pytest.raises(SpecError, match="max greater than min"):
        explore(scene, rescale=(1, 0))
    m = explore(scene, options=ViewOptions(cache_dir=False), colormap="magma")
    try:
        assert httpx.get(m.url + "config.json").json()["layers"][0]["legend"]["colormap"] == "magma"
    finally:
        m.close()
    model = tilecast.Model.from_callable(lambda x: (x[:, :1] % 2).astype("uint8"), layout="NCHW", input_tile_size=16,
                                         output_bands={"v": "uint8"})
    view = from_prediction(model.predict_image(scene), ViewOptions(cache_dir=False, classes=["even", "odd"]))
    try:
        assert [i["name"] for i in view.main.style.legend()["items"]] == ["even", "odd"]
    finally:
        view.close()


def test_rendered_tiles_kept_are_bounded_in_bytes(raster, monkeypatch):
    """Symptom: rendered tiles were kept by count only (4096, "a few KB each"), but a noisy float output's tile is
    100 KB and more: panning over one could hold half a gigabyte besides the bounded block cache."""
    from tilecast.view import tiles

    def noise(x: np.ndarray) -> np.ndarray:
        return (np.sin(x[:, :1] * 12.9898 + x[:, 1:2] * 78.233) * 43758.5453 % 1).astype("float32")

    scene = raster(coord_image(H, W, 2))
    model = tilecast.Model.from_callable(noise, layout="NCHW", input_tile_size=TILE, output_bands={"v": "float32"})
    with serve(model.predict_image(scene), rescale=(0.0, 1.0), block_size=512) as server:
        layer = server.view.main
        with rasterio.open(scene) as ds:
            found = list(TMS.tiles(*transform_bounds(ds.crs, "EPSG:4326", *ds.bounds), [layer.zooms.native]))
        urls = [server.url + f"tiles/{t.z}/{t.x}/{t.y}.png" for t in found]
        first = len(httpx.get(urls[0], timeout=60).content)
        monkeypatch.setattr(tiles, "PNG_CACHE_BYTES", 2 * first)
        sizes = [first] + [len(httpx.get(u, timeout=60).content) for u in urls[1:]]
        assert max(sizes) > 60_000 and len(urls) >= 4
        kept = [p for p in layer._pngs.values() if p]
        assert layer.png_bytes == sum(map(len, kept)) <= 2 * first
        assert 1 <= len(kept) < len(urls)


def blocks_under(grid, z: int, x: int, y: int, block: int) -> int:
    """Blocks of ``block`` x ``block`` pixels a tile's own footprint (no margin) touches."""
    from tilecast.view.zooms import tile_window

    win = tile_window(grid, z, x, y, margin=0)
    if win is None:
        return 0
    rows = (win.row_off + win.height - 1) // block - win.row_off // block + 1
    cols = (win.col_off + win.width - 1) // block - win.col_off // block + 1
    return int(rows * cols)


def test_the_zoom_out_guard_holds_across_the_whole_raster_not_only_at_its_centre():
    """Symptom: ``minzoom`` came from the tile at the raster's centre only; a web-mercator tile covers more ground
    nearer the equator, so at ``minzoom`` the tiles along the southern edge of a raster from 57 to 76 degrees north
    (here polar stereographic, 1 km pixels) needed 6 blocks, more than ``--budget`` 4, each one a model run."""
    from tilecast.sources.base import Grid
    from tilecast.view.zooms import block_zooms, wgs84_bounds

    grid = Grid(rasterio.crs.CRS.from_epsg(3413), rasterio.Affine(1000, 0, -1e6, 0, -1000, -1.5e6), (2000, 2000))
    block, budget = 512, 4
    zooms = block_zooms(grid, (block, block), (4, 4), budget)
    tiles = list(TMS.tiles(*wgs84_bounds(grid), [zooms.minzoom]))
    assert len(tiles) > 20
    assert max(blocks_under(grid, t.z, t.x, t.y, block) for t in tiles) <= budget


def small_stripes(x: np.ndarray) -> np.ndarray:
    return ((x[:, 0] // 7 + x[:, 1] // 5) % 3 + 1).astype("uint8")[:, None]


@pytest.mark.parametrize("crs, transform, shape", [
    ("EPSG:4326", rasterio.Affine(0.0001, 0, 10.0, 0, -0.0001, 45.0), (H, W)),  # lat/lon
    ("EPSG:3413", rasterio.Affine(100, 0, 500000, 0, -100, -2000000), (H, W)),  # polar stereographic, at 70 N
    ("EPSG:32633", rasterio.Affine(10, 0, 500000, 0, -10, 4600000), (5, 7)),  # smaller than a model tile, a map tile
])
def test_map_tiles_equal_the_batch_prediction_on_other_grids(raster, tmp_path, crs, transform, shape):
    from rio_tiler.errors import TileOutsideBounds
    from rio_tiler.io import Reader

    scene = raster(coord_image(*shape, 2), crs=crs, transform=transform)
    band = {"landcover": {"type": "uint8", "classes": CLASSES, "colors": {k: list(v) for k, v in COLORS.items()}}}
    model = tilecast.Model.from_callable(small_stripes, layout="NCHW", input_tile_size=16, input_overlap_size=2,
                                         output_bands=band)
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene), block_size=64) as server, Reader(str(ref)) as reader:
        layer = server.view.main
        compared = 0
        for z in (layer.zooms.native, layer.zooms.native + 2):
            found = list(TMS.tiles(*transform_bounds(reader.dataset.crs, "EPSG:4326", *reader.dataset.bounds), [z]))
            for t in found[:: max(1, len(found) // 6)]:
                got = png(httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png", timeout=60))
                try:
                    img = reader.tile(t.x, t.y, t.z, resampling_method="nearest", reproject_method="nearest")
                except TileOutsideBounds:  # beside the raster's footprint, inside its lon/lat box
                    assert not got[..., 3].any(), t
                    continue
                values, mask = img.array.data[0], np.ma.getmaskarray(img.array)[0]
                assert np.array_equal(got[..., 3] == 0, mask), t
                for k, rgb in COLORS.items():
                    assert (got[(values == k) & ~mask][:, :3] == rgb).all(), t
                compared += int((~mask).sum())
        assert compared > 0


def test_tile_urls_of_a_range_still_to_come_from_data_are_this_sessions_own(raster):
    """Symptom: the tile URLs' version was the same in a restarted viewer (same model and input) while the value
    range, taken from each session's first tile, could differ: the browser then mixed tiles coloured with the last
    session's range (cached an hour) with new ones, under a legend showing only the new range."""
    scene = raster(coord_image(H, W, 2))
    model = tilecast.Model.from_callable(lambda x: x[:, :1] / 100.0, layout="NCHW", input_tile_size=TILE,
                                         output_bands={"v": "float32"})
    versions = {}
    for rescale in (None, None, (0.0, 1.0), (0.0, 1.0)):
        view = from_prediction(model.predict_image(scene), ViewOptions(cache_dir=False, rescale=rescale))
        try:
            versions.setdefault(rescale, []).append(view.main.version)
        finally:
            view.close()
    assert versions[None][0] != versions[None][1]  # from data: a session's own
    assert versions[(0.0, 1.0)][0] == versions[(0.0, 1.0)][1]  # fixed: the browser's cache stays good


SLOW_CLI = """
import importlib, sys, time
blocks = importlib.import_module("tilecast.view.blocks")  # tilecast.view is also a function's name
real = blocks.compute_chunk
def slow(*args, **kwargs):  # a model that takes a minute per block
    sys.stderr.write("block started\\n"); sys.stderr.flush()
    time.sleep(60)
    return real(*args, **kwargs)
blocks.compute_chunk = slow
from tilecast.cli.view import view
view()
"""


def ask(url: str) -> None:
    """A browser's request for a tile, left to fail when the server goes."""
    with contextlib.suppress(httpx.HTTPError):
        httpx.get(url, timeout=90)


def test_ctrl_c_stops_the_viewer_at_once_even_while_a_block_is_computing(raster, tmp_path):
    """Symptom: Ctrl-C while a slow model computed a block hung until the block was done (closing waited for it,
    and then the interpreter's exit did), and a second Ctrl-C did not help."""
    import signal

    from onnx_models import linear_1x1

    scene = raster(coord_image(H, W, 2))
    onnx = linear_1x1(tmp_path / "m.onnx", [1.0, 0.0])
    cmd = [sys.executable, "-c", SLOW_CLI, scene, "--model", onnx, "--tile", "64", "--output-band", "y:float32",
           "--no-browser", "--port", "0", "--no-cache", "-q"]
    for compute in (False, True):
        # Ctrl-C must reach the child even when the suite runs as a background job (which ignores SIGINT)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)) as proc:
            try:
                url = proc.stdout.readline().strip()
                assert url.startswith("http://127.0.0.1:"), proc.stderr.read()
                tj = httpx.get(url + "tilejson.json", timeout=30).json()  # serving: Ctrl-C now stops the server
                if compute:
                    t = TMS.tile(*lonlat(scene, 100, 100), tj["minzoom"] + 2)
                    threading.Thread(target=ask, args=(url + f"tiles/{t.z}/{t.x}/{t.y}.png",), daemon=True).start()
                    assert proc.stderr.readline().strip() == "block started"
                start = time.monotonic()
                proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
                took = time.monotonic() - start
            finally:
                proc.kill()
            err = proc.stderr.read()
        assert took < 10 and "Traceback" not in err, (took, err)
        assert proc.returncode == (130 if compute else 0) or (compute and proc.returncode == -signal.SIGINT), err


def test_an_explicit_colormap_on_a_class_map_is_used_not_ignored(raster, tmp_path):
    """Symptoms: ``--colormap magma`` on a model whose card declares classes was silently ignored (the class colours
    showed); on a class raster tilecast wrote (colour table and class names) it gave neither: the names' fallback
    palette, not the raster's colours nor the colormap."""
    scene = raster(coord_image(H, W, 2))
    band = {"landcover": {"type": "uint8", "classes": CLASSES, "colors": {k: list(v) for k, v in COLORS.items()}}}
    model = tilecast.Model.from_callable(lambda x: stripes(x)[:, None].astype("uint8"), layout="NCHW",
                                         input_tile_size=TILE, output_bands=band)
    out = model.predict_image(scene).to_geotiff(tmp_path / "landcover.tif")
    for view in (from_prediction(model.predict_image(scene), ViewOptions(cache_dir=False, colormap="magma")),
                 from_raster(out, ViewOptions(colormap="magma")),
                 from_raster(out, ViewOptions(rescale=(1.0, 3.0)))):
        try:
            legend = view.main.style.legend()
            assert legend["kind"] == "range" and legend["colormap"] in ("magma", "viridis"), legend
        finally:
            view.close()
    view = from_raster(out)  # without: the raster's own classes and colours
    try:
        items = view.main.style.legend()["items"]
        assert [(i["name"], i["color"]) for i in items] == [
            (CLASSES[v], "#{:02x}{:02x}{:02x}".format(*COLORS[v])) for v in CLASSES]
    finally:
        view.close()


def test_a_raster_wholly_beyond_web_mercators_latitudes_is_a_clear_error(raster):
    """Symptom: a raster around the South Pole (100 km in EPSG:3031, all south of 89 degrees) opened an empty map
    fitted to inverted bounds (south -85.05, north -89.3) with native zoom 0, and nothing said why."""
    from tilecast.errors import RegionError

    pole = raster(np.ones((1, 100, 100), "uint8"), crs="EPSG:3031",
                  transform=rasterio.Affine(1000, 0, -50000, 0, -1000, 50000))
    with pytest.raises(RegionError, match=r"beyond 85\.05"):
        from_raster(pole)
    model = tilecast.Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=TILE,
                                         output_bands={"v": "uint8"})
    with pytest.raises(RegionError, match=r"beyond 85\.05"):
        from_prediction(model.predict_image(pole), ViewOptions(cache_dir=False))
    arctic = raster(np.ones((1, 40, 40), "uint8"), crs="EPSG:3413",  # around the North Pole, reaching 76 N: shown
                    transform=rasterio.Affine(50000, 0, -1e6, 0, -50000, 1e6))
    view = from_raster(arctic)
    try:
        _, south, _, north = view.config("http://h/")["bounds"]
        assert south < 80 < north
    finally:
        view.close()


def test_nan_values_are_transparent_when_nodata_is_another_number(raster, tmp_path):
    """Symptom: a float model that returns NaN where it has no answer, run with ``nodata=-9999``, showed those pixels
    opaque in the colour of the range's low end (viridis' dark purple), as if they were the smallest value."""
    from rio_tiler.io import Reader

    def fn(x: np.ndarray) -> np.ndarray:
        out = x[:, :1] / 100.0
        out[x[:, :1] < 100] = np.nan
        return out

    scene = raster(coord_image(H, W, 2))
    model = tilecast.Model.from_callable(fn, layout="NCHW", input_tile_size=TILE, output_bands={"v": "float32"},
                                         nodata=-9999)
    ref = model.predict_image(scene).to_geotiff(tmp_path / "ref.tif", overviews=False)
    with serve(model.predict_image(scene), rescale=(0.0, 5.0)) as server, Reader(str(ref)) as reader:
        nan_seen = 0
        for t in TMS.tiles(*transform_bounds(reader.dataset.crs, "EPSG:4326", *reader.dataset.bounds),
                           [server.view.main.zooms.native]):
            got = png(httpx.get(server.url + f"tiles/{t.z}/{t.x}/{t.y}.png", timeout=60))
            img = reader.tile(t.x, t.y, t.z, resampling_method="nearest", reproject_method="nearest")
            values, mask = img.array.data[0], np.ma.getmaskarray(img.array)[0]
            nan = np.isnan(values) & ~mask
            nan_seen += int(nan.sum())
            assert np.array_equal(got[..., 3] == 0, mask | nan), t
        assert nan_seen > 0


def test_page_of_an_existing_class_raster_loads_clean(raster, tmp_path):
    """``tilecast view out/landcover.tif``: one layer, its colour table as legend, no console error, nothing asked
    outside the server."""
    from test_view_browser import browser_or_skip

    browser_or_skip()
    scene = raster(coord_image(H, W, 2))
    band = {"landcover": {"type": "uint8", "classes": CLASSES, "colors": {k: list(v) for k, v in COLORS.items()}}}
    model = tilecast.Model.from_callable(lambda x: stripes(x)[:, None].astype("uint8"), layout="NCHW",
                                         input_tile_size=TILE, output_bands=band)
    out = model.predict_image(scene).to_geotiff(tmp_path / "landcover.tif")
    with ViewServer(from_raster(out)).start() as server:
        facts = open_page(server.url, tmp_path / "profile", ALL_LOADED)
    assert facts["console"] == [] and facts["refused"] == [] and facts["errors_hidden"]
    assert all(name in facts["legend"] for name in CLASSES.values())


def test_a_block_size_of_zero_is_refused_not_replaced_by_the_default(raster):
    """Symptom: ``--block-size 0`` (or ``0,256``) served with 512-pixel blocks, without a word."""
    from tilecast.errors import SpecError

    for size in (0, (0, 256), (256, -1)):
        with pytest.raises(SpecError, match="--block-size"):
            ViewOptions(block_size=size)
    scene = raster(coord_image(40, 40, 1))
    r = subprocess.run([sys.executable, "-c", "from tilecast.cli.view import view; view()", scene, "--no-browser",
                        "--port", "0", "--block-size", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "SpecError: --block-size" in r.stderr and "Traceback" not in r.stderr


def test_no_cache_with_a_cache_dir_is_refused(raster, tmp_path):
    """Symptom: ``--no-cache --cache-dir DIR`` silently kept nothing in DIR."""
    scene = raster(coord_image(40, 40, 1))
    r = subprocess.run([sys.executable, "-c", "from tilecast.cli.view import view; view()", scene, "--no-browser",
                        "--port", "0", "--no-cache", "--cache-dir", str(tmp_path / "c")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "SpecError: --no-cache" in r.stderr and "Traceback" not in r.stderr
