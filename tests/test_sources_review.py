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


def _stac_items(raster, tmp_path, drop=None):
    import json

    from conftest import coord_image

    img = coord_image(20, 20, 2)
    items = []
    for i in range(2):
        t = from_origin(X0 + 200 * i, Y0, RES, RES)
        assets = {}
        for b, name in enumerate(["B04", "B08"]):
            raster(img[b : b + 1], name=f"item{i}_{name}.tif", transform=t)
            assets[name] = {"href": f"item{i}_{name}.tif", "type": "image/tiff", "roles": ["data"]}
        if drop is not None and i == drop:
            del assets["B04"]
        items.append({"type": "Feature", "stac_version": "1.0.0", "id": f"item{i}", "assets": assets, "links": [],
                      "geometry": None, "properties": {"datetime": "2026-01-01T00:00:00Z"}})
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


@pytest.mark.parametrize("bands", [None, ["B04", "B08"], ["B08"]])
def test_a_stac_item_missing_an_asset_is_an_error_naming_it(raster, tmp_path, bands):
    from tilecast.errors import InputError
    from tilecast.sources import open_source

    path = _stac_items(raster, tmp_path, drop=1)
    if bands == ["B08"]:  # every item has it: fine
        assert open_source(str(path), bands=bands).band_names == ["B08"]
        return
    with pytest.raises(InputError, match=r"item1.*B04"):
        open_source(str(path), bands=bands)


def test_stac_asset_names_missing_from_the_first_item_are_an_error_naming_them(raster, tmp_path):
    from tilecast.errors import InputError
    from tilecast.sources import open_source

    path = _stac_items(raster, tmp_path, drop=0)
    with pytest.raises(InputError, match=r"item0.*B04"):
        open_source(str(path), bands=["B04", "B08"])


def test_a_dataset_without_a_crs_is_a_not_georeferenced_error():
    from tilecast.errors import NotGeoreferencedError

    band = _north_up().isel(band=0, drop=True).drop_vars("spatial_ref")
    with pytest.raises(NotGeoreferencedError, match="write_crs"):
        XarraySource(xr.Dataset({"red": band, "nir": band}))
