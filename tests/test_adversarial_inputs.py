"""Inputs that silently went wrong (issue 17, item 9, the source parts): xarray band names and nodata, and warps
whose values depended on the tile layout."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import from_origin
from rasterio.warp import reproject
from rasterio.windows import Window

from conftest import coord_image
from tilecast import Model
from tilecast.errors import TilecastWarning
from tilecast.sources.base import Grid
from tilecast.sources.rasterio_source import RasterioSource, warp_grid
from tilecast.sources.xarray_source import XarraySource

pytestmark = pytest.mark.adversarial


@pytest.fixture
def three_bands(raster):
    img = coord_image(20, 24, 3).astype("int16") + 10
    img[0, 2, 3] = 5  # nodata in band 0 only
    img[2, 7, 8] = 5  # nodata in band 2 only
    return raster(img, nodata=5, descriptions=["red", "green", "blue"]), img


def test_xarray_after_isel_picks_the_selected_long_names(three_bands):
    rioxarray = pytest.importorskip("rioxarray")
    path, img = three_bands
    da = rioxarray.open_rasterio(path).isel(band=[0, 2])
    assert len(da.attrs["long_name"]) == 3  # rioxarray keeps the stale list
    src = XarraySource(da)
    assert src.band_names == ["red", "blue"]
    data, valid = src.read(Window(0, 0, 24, 20))
    assert np.array_equal(data, img[[0, 2]])
    assert not valid[2, 3] and not valid[7, 8] and valid.sum() == 20 * 24 - 2
    src = XarraySource(da, bands=["blue"])
    assert np.array_equal(src.read(Window(0, 0, 24, 20))[0], img[[2]])


def test_xarray_long_names_that_fit_nothing_warn_instead_of_indexerror(three_bands):
    rioxarray = pytest.importorskip("rioxarray")
    path, _ = three_bands
    da = rioxarray.open_rasterio(path).isel(band=[0, 2]).assign_coords(band=["p", "q"])
    with pytest.warns(TilecastWarning, match="long_name"):
        src = XarraySource(da)
    assert src.band_names == ["p", "q"]


def test_xarray_dataset_keeps_each_variables_nodata(three_bands):
    rioxarray = pytest.importorskip("rioxarray")
    path, img = three_bands
    ds = rioxarray.open_rasterio(path, band_as_variable=True)
    src = XarraySource(ds)
    data, masks = src.read_masked(Window(0, 0, 24, 20))
    assert np.array_equal(data, img)
    assert np.array_equal(masks, img != 5)  # per band
    model = Model.from_callable(lambda x: x.astype("float32"), layout="NCHW", input_tile_size=8,
                                output_bands={"a": "float32", "b": "float32", "c": "float32"})
    out = np.asarray(model.predict_image(ds).to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.asarray(model.predict_image(path).to_numpy())
    assert np.isnan(out[:, 2, 3]).all() and np.isnan(out[:, 7, 8]).all()
    assert np.array_equal(np.isnan(out), np.isnan(ref))
    assert np.array_equal(out[~np.isnan(out)], ref[~np.isnan(ref)])


@pytest.fixture(scope="module")
def utm(tmp_path_factory):
    h, w = 240, 300
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(0)
    img = (150 + 40 * np.sin(xx / 7.0) * np.cos(yy / 5.0) + rng.normal(0, 5, (h, w))).astype("float32")
    path = tmp_path_factory.mktemp("utm") / "utm.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 10, 10), tiled=True, blockxsize=64,
                       blockysize=64) as dst:
        dst.write(img[None])
    return str(path)


def _reprojected(path, grid, resampling):
    """rasterio's whole-raster ``reproject`` (GDAL's approximate transformer over the whole grid)."""
    ref = np.full(grid.shape, np.nan, "float32")
    with rasterio.open(path) as src:
        reproject(rasterio.band(src, 1), ref, dst_transform=grid.transform, dst_crs=grid.crs,
                  resampling=resampling, dst_nodata=np.nan)
    return ref


@pytest.mark.parametrize("resampling", [Resampling.bilinear, Resampling.cubic, Resampling.average])
@pytest.mark.parametrize("res", [0.0001, 0.00015, 0.0002, 0.0003, 0.0005])
def test_windowed_warps_equal_a_whole_raster_warp(utm, res, resampling):
    with rasterio.open(utm) as ds:
        native = Grid(ds.crs, ds.transform, (ds.height, ds.width))
    grid = warp_grid(native, CRS.from_epsg(4326), (res, res))
    ref = _reprojected(utm, grid, resampling)
    for tile in (16, 61, 128):
        src = RasterioSource(utm, warp=(grid, resampling))
        out = np.full(grid.shape, np.nan, "float32")
        h, w = grid.shape
        for r in range(0, h, tile):
            for c in range(0, w, tile):
                win = Window(c, r, min(tile, w - c), min(tile, h - r))
                data, valid = src.read(win)
                block = data[0].astype("float32")
                if valid is not None:
                    block[~valid] = np.nan
                out[r : r + win.height, c : c + win.width] = block
        src.close()
        both = ~np.isnan(ref) & ~np.isnan(out)
        assert both.sum() > 0.5 * ref.size
        assert np.abs(out[both] - ref[both]).max() < 1e-3, (tile, res, resampling)


def test_prediction_with_fix_input_proj_does_not_depend_on_the_tile(utm):
    outs = []
    for tile in (16, 48):
        model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=tile, output_bands={"v": "float32"},
                                    crs="EPSG:4326", resolution=0.0001, fix_input_proj=True)
        outs.append(np.asarray(model.predict_image(utm).to_numpy()))
    with rasterio.open(utm) as ds:
        native = Grid(ds.crs, ds.transform, (ds.height, ds.width))
    ref = _reprojected(utm, warp_grid(native, CRS.from_epsg(4326), (0.0001, 0.0001)), Resampling.bilinear)
    for out in outs:
        both = ~np.isnan(ref) & ~np.isnan(out[0])
        assert both.sum() > 0.5 * ref.size
        assert np.abs(out[0][both] - ref[both]).max() < 1e-3
