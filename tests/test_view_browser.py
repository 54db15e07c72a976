"""The map page in a real browser: headless Chromium, no network beyond the tilecast server.

Run as a script to make the user guide's screenshot of the demo scene::

    python tests/test_view_browser.py docs/view.png
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1000, "height": 700}


def browser_or_skip() -> None:
    pytest.importorskip("playwright.sync_api")
    pytest.importorskip("rio_tiler")
    pytest.importorskip("uvicorn")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); the page cannot be checked")


TO_SCREEN = ("(pts) => pts.map(([lon, lat]) => { const p = window.tilecastMap.latLngToContainerPoint([lat, lon]);"
             " return [p.x, p.y]; })")


@contextlib.contextmanager
def browser_page(url: str, user_data_dir: str | os.PathLike):
    """A headless Chromium page with no network but ``url``; yields ``(page, refused)``, the list of requests refused
    (outside the server) filling as the page loads."""
    from playwright.sync_api import sync_playwright

    refused: list[str] = []

    def gate(route) -> None:
        if route.request.url.startswith(url):
            route.continue_()
        else:
            refused.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(user_data_dir), executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport=VIEWPORT)
        try:
            context.route("**/*", gate)
            yield context.new_page(), refused
        finally:
            context.close()


def load_page(url: str, user_data_dir: str | os.PathLike, opacity: int | None = None, points=(), hover=None):
    """Open the map page with no network but ``url``; returns ``(screenshot PNG bytes, facts)``.

    ``facts``: the requests refused (outside the server), the legend's entries with their swatches' boxes, the
    panel's box, the screen positions of ``points`` (lon, lat), and the value shown with the cursor at ``hover``."""
    with browser_page(url, user_data_dir) as (page, refused):
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        if opacity is not None:
            page.evaluate("(v) => { const o = document.getElementById('opacity'); o.value = v;"
                          " o.dispatchEvent(new Event('input')); }", opacity)
        page.wait_for_load_state("networkidle", timeout=120_000)
        page.wait_for_function("() => !document.querySelector('.leaflet-tile:not(.leaflet-tile-loaded)')",
                               timeout=120_000)
        if hover is not None:
            (x, y), = page.evaluate(TO_SCREEN, [list(hover)])
            page.mouse.move(x, y)
            page.wait_for_function("() => document.getElementById('value').textContent.includes(':')")
        page.wait_for_timeout(300)
        facts = {
            "refused": refused,
            "legend": [{"name": item.inner_text().strip(), "box": item.locator(".swatch").bounding_box()}
                       for item in page.locator(".legend-item").all()],
            "panel": page.locator("#panel").bounding_box(),
            "value": page.locator("#value").inner_text(),
            "guard_hidden": page.locator("#guard").is_hidden(),
            "points": page.evaluate(TO_SCREEN, [list(pt) for pt in points]),
        }
        return page.screenshot(), facts


def test_page_shows_legend_and_class_colours_offline(tmp_path, raster):
    browser_or_skip()
    import PIL.Image
    import rasterio
    from rasterio.warp import transform as warp

    import tilecast
    from conftest import coord_image
    from tilecast.view.app import ViewServer
    from tilecast.view.session import ViewOptions, from_prediction

    h, w = 400, 480
    classes = {1: "water", 2: "forest", 3: "crops", 4: "urban"}
    colors = {1: (0, 90, 200), 2: (20, 140, 40), 3: (230, 200, 60), 4: (200, 30, 30)}

    def quadrants(x):  # band 0 = row, band 1 = col: one class per quadrant of the scene
        return (1 + 2 * (x[:, 0] >= h // 2) + (x[:, 1] >= w // 2)).astype("uint8")[:, None]

    scene = raster(coord_image(h, w, 3))
    band = {"landcover": {"type": "uint8", "classes": classes, "colors": {k: list(v) for k, v in colors.items()}}}
    model = tilecast.Model.from_callable(quadrants, layout="NCHW", input_tile_size=64, output_bands=band)
    view = from_prediction(model.predict_image(scene), ViewOptions(cache_dir=False))
    centres = {1: (h // 4, w // 4), 2: (h // 4, 3 * w // 4), 3: (3 * h // 4, w // 4), 4: (3 * h // 4, 3 * w // 4)}
    with rasterio.open(scene) as ds:
        lons, lats = warp(ds.crs, "EPSG:4326", *zip(*(ds.xy(r, c) for r, c in centres.values()), strict=True))
    with ViewServer(view).start() as server:
        shot, facts = load_page(server.url, tmp_path / "profile", opacity=100,
                                points=list(zip(lons, lats, strict=True)), hover=(lons[3], lats[3]))
    points = facts["points"]
    image = np.asarray(PIL.Image.open(io.BytesIO(shot)).convert("RGB")).astype(int)
    if os.environ.get("TILECAST_VIEW_SCREENSHOT"):
        Path(os.environ["TILECAST_VIEW_SCREENSHOT"]).write_bytes(shot)
    assert facts["refused"] == []  # everything the page needs comes from tilecast itself
    assert [e["name"] for e in facts["legend"]] == list(classes.values())
    for entry, value in zip(facts["legend"], classes, strict=True):
        box = entry["box"]
        cx, cy = int(box["x"] + box["width"] / 2), int(box["y"] + box["height"] / 2)
        assert np.abs(image[cy, cx] - colors[value]).max() <= 2, entry
    panel = facts["panel"]
    for value, (x, y) in zip(classes, points, strict=True):
        assert 0 <= x < VIEWPORT["width"] and 0 <= y < VIEWPORT["height"]
        assert not (panel["x"] <= x <= panel["x"] + panel["width"] and panel["y"] <= y <= panel["y"] + panel["height"])
        patch = image[int(y) - 3 : int(y) + 4, int(x) - 3 : int(x) + 4]
        assert (np.abs(patch - colors[value]).max(axis=-1) <= 2).all(), (value, patch[3, 3])
    assert "urban" in facts["value"]  # the value under the cursor, with its class name
    assert facts["guard_hidden"]


def demo_screenshot(path: str | os.PathLike) -> Path:
    """The user guide's picture: the demo's Landsat scene and land-cover model, as ``tilecast view`` shows them."""
    import tempfile

    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root / "examples"))
    import demo
    import landsat
    from tilecast.loading import load_model
    from tilecast.view.app import ViewServer
    from tilecast.view.session import ViewOptions, from_prediction

    with tempfile.TemporaryDirectory() as tmp:
        stack = landsat.write_stack(Path(tmp) / "landsat_stack.tif")
        model = load_model(str(demo.MODEL), input_tile_size=(demo.TILE, demo.TILE),
                           input_overlap_size=(demo.OVERLAP, demo.OVERLAP), bands=list(landsat.MODEL_BANDS),
                           output_bands={"landcover": {"type": "uint8", "classes": landsat.CLASSES}})
        view = from_prediction(model.predict_image(str(stack)),
                               ViewOptions(cache_dir=False, rgb=["B3", "B2", "B1"]), title="Landsat 7 land cover")
        with ViewServer(view).start() as server:
            w, s, e, n = view.config(server.url)["bounds"]
            shot, _ = load_page(server.url, Path(tmp) / "profile", hover=((w + e) / 2, (s + n) / 2))
    Path(path).write_bytes(shot)
    return Path(path)


if __name__ == "__main__":
    print(demo_screenshot(sys.argv[1] if len(sys.argv) > 1 else "docs/view.png"))
