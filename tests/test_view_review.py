"""Review of ``tilecast view``: map geometry at the edges of the world, bad requests."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.warp import transform

from tilecast.sources.base import Grid

pytest.importorskip("rio_tiler")

from tilecast.view.session import from_raster
from tilecast.view.zooms import TMS, block_zooms, native_zoom, tilejson, wgs84_bounds

pytestmark = pytest.mark.filterwarnings("ignore::rio_tiler.errors.NoOverviewWarning")


def utm60_grid(lon: float) -> Grid:
    """10 km x 10 km of 100 m pixels in UTM zone 60S, centred on ``lon`` at 17 S."""
    xs, ys = transform("EPSG:4326", "EPSG:32760", [lon], [-17.0])
    return Grid(rasterio.crs.CRS.from_epsg(32760), Affine(100, 0, xs[0] - 5000, 0, -100, ys[0] + 5000), (100, 100))


def test_a_raster_across_the_antimeridian_gets_the_zooms_and_bounds_of_its_neighbour(raster, tmp_path):
    """Symptom: a raster across 180 degrees got native zoom 0 (the warp to web mercator spanned the world), bounds
    with west > east (Leaflet and MapLibre then ask for no tile of it) and a centre on the Greenwich meridian."""
    across, beside = utm60_grid(180.0), utm60_grid(178.0)
    assert native_zoom(beside) >= 9
    assert native_zoom(across) == native_zoom(beside)
    assert block_zooms(across, (10, 10), (10, 10), 4) == block_zooms(beside, (10, 10), (10, 10), 4)
    w, s, e, n = wgs84_bounds(across)
    assert -180 <= w < e <= 180 and s < -17 < n
    doc = tilejson("x", "http://h/{z}/{x}/{y}.png", across, block_zooms(across, (10, 10), (10, 10), 4))
    lon, lat, _ = doc["center"]
    assert abs(abs(lon) - 180) < 0.01 and abs(lat + 17) < 0.01
    bw, bs, be, bn = doc["bounds"]
    assert bw <= -179.95 and be >= 179.95 and bs < -17 < bn  # both sides of the raster are inside, west < east

    path = tmp_path / "across.tif"
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8", crs=across.crs,
                       transform=across.transform, nodata=0) as ds:
        ds.write(np.full((1, 100, 100), 3, np.uint8))
    view = from_raster(path)
    try:
        fw, _, fe, _ = view.config("http://h/")["bounds"]  # the page fits the map to this: the raster, not the world
        assert fw < fe and fe - fw < 1 and abs((fw + fe) / 2 % 360 - 180) < 0.01
        layer = view.main
        assert layer.zooms.native == native_zoom(beside)
        for lon in (179.99, -179.99):
            t = TMS.tile(lon, -17.0, layer.zooms.native)
            assert asyncio.run(layer.tile(t.z, t.x, t.y)) is not None
    finally:
        view.close()


def test_point_far_outside_the_rasters_projection_is_no_value_not_a_server_error(tmp_path):
    """Symptom: a click a quarter of the world away from a UTM raster (``/point?lon=100&lat=0`` for zone 33)
    answered 500: PROJ refuses the point ("outside of projection domain") and the error went up to the server."""
    from starlette.testclient import TestClient

    from tilecast.view.app import create_app

    path = tmp_path / "utm.tif"
    with rasterio.open(path, "w", driver="GTiff", width=20, height=20, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=Affine(10, 0, 500000, 0, -10, 5000000), nodata=0) as ds:
        ds.write(np.full((1, 20, 20), 3, np.uint8))
    view = from_raster(path)
    try:
        client = TestClient(create_app(view))
        for lon, lat in ((100, 0), (15, 95), ("inf", 0)):
            r = client.get(f"/point?lon={lon}&lat={lat}")
            assert r.status_code == 200, r.text
            assert r.json() == {"raster": None}
        (lon,), (lat,) = transform("EPSG:32633", "EPSG:4326", [500100], [4999900])
        inside = client.get(f"/point?lon={lon}&lat={lat}").json()["raster"]
        assert inside is not None and inside["values"] == [3.0]
    finally:
        view.close()
