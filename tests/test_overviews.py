"""Streamed first overview level: the same pyramid GDAL's COG driver would build, with fewer passes over the data."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tilecast import Model
from tilecast.sinks.geotiff import GeoTIFFSink, cog_options
from tilecast.sinks.overviews import OverviewWriter, downsample2, overview_factors


def gdal_cog(tmp_path, data, nodata, categorical=False, blocksize=128, name="g"):
    """GDAL's own COG (overviews computed by the COG driver) of ``data``."""
    src = tmp_path / f"{name}_src.tif"
    c, h, w = data.shape
    with rasterio.open(src, "w", driver="GTiff", width=w, height=h, count=c, dtype=data.dtype, nodata=nodata,
                       crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 0, 1, 1)) as dst:
        dst.write(data)
    out = tmp_path / f"{name}_cog.tif"
    rasterio.shutil.copy(src, out, **cog_options((h, w), blocksize=blocksize, categorical=categorical))
    return out


def levels(path):
    with rasterio.open(path) as ds:
        return [(ds.height, ds.width)] + [(math.ceil(ds.height / f), math.ceil(ds.width / f))
                                          for f in ds.overviews(1)], ds.overviews(1)


def read_level(path, k):
    with rasterio.open(path, overview_level=k) as ds:
        return ds.read()


@pytest.mark.parametrize("shape", [(128, 128), (129, 20), (260, 140), (514, 2000), (5, 300)])
def test_overview_factors_are_gdals(tmp_path, shape):
    path = gdal_cog(tmp_path, np.zeros((1, *shape), np.uint8), None)
    assert overview_factors(shape, 128) == levels(path)[1]


@pytest.mark.parametrize(
    ("dtype", "nodata", "categorical"),
    [("float32", float("nan"), False), ("float32", None, False), ("float32", -9999.0, False),
     ("uint16", 0, False), ("int16", -1, False), ("uint8", None, False), ("uint8", 255, True)],
)
def test_first_level_equals_gdals(tmp_path, dtype, nodata, categorical):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (2, 128, 96)).astype(dtype)
    if dtype == "float32":
        data += rng.random(data.shape, dtype="float32")
    if nodata is not None:
        data[:, rng.random((128, 96)) < 0.2] = nodata  # scattered holes, some whole 2 x 2 cells
        data[:, 40:44, 10:14] = nodata
    if dtype == "float32":
        data[0, 3, 3] = np.nan  # a NaN that is not the nodata value
    gdal = read_level(gdal_cog(tmp_path, data, nodata, categorical), 0)
    ours = downsample2(data, "nearest" if categorical else "average", nodata)
    assert ours.dtype == gdal.dtype and ours.shape == gdal.shape
    if dtype == "float32":
        np.testing.assert_allclose(ours, gdal, rtol=1e-6, equal_nan=True)
    else:
        np.testing.assert_array_equal(ours, gdal)


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.tuples(st.just(1), st.integers(1, 9), st.integers(1, 9)),
              elements=st.one_of(st.just(np.nan), st.floats(-100, 100, width=32))))
def test_odd_edges_average_the_pixels_that_exist(data):
    out = downsample2(data, "average", float("nan"))
    _, h, w = data.shape
    assert out.shape == (1, (h + 1) // 2, (w + 1) // 2)
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            cell = data[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            valid = cell[~np.isnan(cell)]
            if valid.size:
                assert out[0, i, j] == pytest.approx(valid.astype(np.float64).mean(), rel=1e-5, abs=1e-5)
            else:
                assert np.isnan(out[0, i, j])


@pytest.mark.parametrize("masked", [False, True])
def test_predicted_cog_has_gdals_pyramid_and_no_leftovers(tmp_path, raster, masked, monkeypatch):
    """End to end: the COG's overviews equal those GDAL builds from the same full-resolution pixels."""
    streamed = []
    finish = OverviewWriter.finish
    monkeypatch.setattr(OverviewWriter, "finish", lambda self: streamed.append(finish(self)) or streamed[-1])
    rng = np.random.default_rng(1)
    img = rng.random((1, 600, 520), dtype="float32") * 100
    if masked:
        img[0, 50:90, 30:200] = -1
    model = Model.from_callable(lambda x: x * 2, layout="NCHW", input_tile_size=64, input_overlap_size=4,
                                output_bands={"y": "float32"})
    out = tmp_path / "out.tif"
    model.predict_image(raster(img, nodata=-1 if masked else None)).run(GeoTIFFSink(out, blocksize=128), progress=False)
    with rasterio.open(out) as ds:
        full, nodata = ds.read(), ds.nodata
        assert ds.overviews(1) == [2, 4, 8]
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    assert streamed == [True]  # the first level came from the stream, not from GDAL
    ref = gdal_cog(tmp_path, full, nodata, name="ref")
    for k in range(3):
        np.testing.assert_allclose(read_level(out, k), read_level(ref, k), rtol=1e-6, equal_nan=True)
    assert sorted(os.listdir(tmp_path)) == sorted(["out.tif", "ref_src.tif", "ref_cog.tif", "in0.tif"])


def test_overview_options_fall_back_to_gdal(tmp_path, raster):
    img = np.arange(300 * 300, dtype="float32").reshape(1, 300, 300)
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=64, output_bands={"y": "float32"})
    out = tmp_path / "o.tif"
    sink = GeoTIFFSink(out, blocksize=128, creation_options={"overview_resampling": "MODE"})
    model.predict_image(raster(img)).run(sink, progress=False)
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4]
    assert not list(tmp_path.glob("*.ovr"))


def test_writes_out_of_order_give_up_streaming(tmp_path):
    from rasterio.windows import Window

    profile = dict(driver="GTiff", tiled=True, blockxsize=256, blockysize=256, width=40, height=40, count=1,
                   dtype="float32", crs="EPSG:32633", transform=rasterio.transform.from_origin(0, 0, 1, 1),
                   nodata=float("nan"))
    ovr = OverviewWriter(str(tmp_path / "t.tif.ovr"), profile, "average", float("nan"), [2])
    ovr.write(Window(0, 20, 40, 20), np.ones((1, 20, 40), "float32"))  # rows 20-40 before rows 0-20
    assert ovr.finish() is False
    ovr = OverviewWriter(str(tmp_path / "u.tif.ovr"), profile, "average", float("nan"), [2])
    for r in range(0, 40, 7):  # odd strip heights carry a row over
        h = min(7, 40 - r)
        ovr.write(Window(0, r, 40, h), np.full((1, h, 40), r, "float32"))
    assert ovr.finish() is True
    with rasterio.open(tmp_path / "u.tif.ovr") as ds:
        level = ds.read(1)
    rows = np.repeat(np.arange(0, 40, 7), 7)[:40].astype("float32")
    np.testing.assert_array_equal(level[:, 0], rows.reshape(20, 2).mean(axis=1))


@pytest.mark.parametrize(("tile", "chunk", "streamed"), [(64, 128, True), (25, 25, False)])
def test_chunked_cog_reduces_each_chunk_like_the_stream(tmp_path, raster, monkeypatch, tile, chunk, streamed):
    """Resumable and Dask outputs (chunks in any order) get the same first level as the streaming sink, to the bit;
    chunks that would split a 2 x 2 cell (odd sizes) leave the overviews to GDAL."""
    from tilecast.sinks import chunked

    derived = []
    derive = chunked.derive_levels
    monkeypatch.setattr(chunked, "derive_levels", lambda *a: derived.append(a) or derive(*a))
    rng = np.random.default_rng(2)
    img = rng.random((1, 600, 520), dtype="float32") * 100
    img[0, 50:90, 30:200] = -1
    model = Model.from_callable(lambda x: x * 2, layout="NCHW", input_tile_size=tile, output_bands={"y": "float32"})
    pred = model.predict_image(raster(img, nodata=-1))
    local = pred.to_geotiff(tmp_path / "local.tif")
    chunks = pred.to_geotiff(tmp_path / "chunks.tif", resume=True, chunk_size=chunk)
    assert bool(derived) is streamed
    with rasterio.open(local) as a, rasterio.open(chunks) as b:
        assert a.overviews(1) == b.overviews(1) == [2]
    got, want = read_level(chunks, 0), read_level(local, 0)
    if streamed:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, equal_nan=True)
    assert not list(tmp_path.glob(".*"))  # no partial file, level, lock or manifest left
