"""Review of the xarray and STAC sources: orientation, dimension names, and errors."""

from __future__ import annotations

import numpy as np
import pytest

xr = pytest.importorskip("xarray")
pytest.importorskip("rioxarray")
gpd = pytest.importorskip("geopandas")

from rasterio.transform import from_origin  # noqa: E402
from rasterio.windows import Window  # noqa: E402
from shapely.geometry import Point  # noqa: E402

from tilecast.errors import TilecastError  # noqa: E402
from tilecast.features import predict_properties  # noqa: E402
from tilecast.runtimes.callable import CallableRuntime  # noqa: E402
from tilecast.sources.xarray_source import XarraySource  # noqa: E402

X0, Y0, RES = 500000.0, 4600000.0, 10.0


def _north_up(h=6, w=5, bands=2) -> xr.DataArray:
    data = np.arange(bands * h * w, dtype="float32").reshape(bands, h, w)
    ys = Y0 - RES * (np.arange(h) + 0.5)
    xs = X0 + RES * (np.arange(w) + 0.5)
    da = xr.DataArray(data, dims=("band", "y", "x"), coords={"band": [1, 2][:bands], "y": ys, "x": xs})
    return da.rio.write_crs("EPSG:32633")


def test_xarray_with_increasing_y_is_read_north_up():
    da = _north_up()
    up = XarraySource(da.isel(y=slice(None, None, -1)))  # the same pixels, y coordinates increasing
    ref = XarraySource(da)
    assert up.grid.transform == ref.grid.transform == from_origin(X0, Y0, RES, RES)
    win = Window(0, 0, 5, 6)
    np.testing.assert_array_equal(up.read(win)[0], ref.read(win)[0])
    assert up.grid.bounds == ref.grid.bounds


def test_sampling_an_xarray_with_increasing_y_matches_the_north_up_one():
    da = _north_up()
    pts = [Point(X0 + RES * c + 5, Y0 - RES * r - 5) for r, c in [(0, 0), (5, 4), (2, 3)]]
    gdf = gpd.GeoDataFrame({"id": range(3)}, geometry=pts, crs="EPSG:32633")
    rt = CallableRuntime(lambda b: {"out": np.asarray(b["b1"], dtype=float)}, outputs=["out"])
    expect = predict_properties(rt, gdf, sample=da, output_properties=["out:float64"])["out"].tolist()
    assert expect == [0.0, 29.0, 13.0]
    got = predict_properties(rt, gdf, sample=da.isel(y=slice(None, None, -1)), output_properties=["out:float64"])
    assert got["out"].tolist() == expect


@pytest.mark.parametrize("names", [("lat", "lon"), ("latitude", "longitude")])
def test_xarray_with_lat_lon_dims(names):
    da = _north_up().rename(y=names[0], x=names[1])
    src = XarraySource(da)
    assert src.grid.transform == from_origin(X0, Y0, RES, RES)
    assert src.band_names == ["b1", "b2"]


def test_xarray_without_spatial_dims_is_a_clear_error():
    da = _north_up().rename(y="row", x="col")
    with pytest.raises(TilecastError, match="set_spatial_dims"):
        XarraySource(da)


def test_xarray_with_set_spatial_dims_keeps_its_georeferencing():
    da = _north_up().rename(y="row", x="col").rio.set_spatial_dims(x_dim="col", y_dim="row")
    assert XarraySource(da).grid.transform == from_origin(X0, Y0, RES, RES)  # was the identity transform
