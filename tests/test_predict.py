"""Pixel-exact predictions against independent computations (numpy/scipy on the whole raster)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from scipy.ndimage import uniform_filter

import tilecast
from onnx_models import argmax_classes, avgpool, linear_1x1, mean_conv, per_band_sum, upsample
from tilecast import Model


def full_mean(img: np.ndarray, k: int) -> np.ndarray:
    """k x k mean of the band sum with zero padding, computed on the whole raster at once."""
    return uniform_filter(img.sum(axis=0).astype(np.float64), size=k, mode="constant", cval=0.0)


@pytest.mark.parametrize("tile,overlap", [((32, 32), 2), ((40, 24), (3, 5)), ((17, 23), 4), ((128, 128), 2)])
def test_tiled_conv_equals_the_whole_raster(tmp_path, raster, tile, overlap):
    rng = np.random.default_rng(1)
    img = rng.random((2, 97, 131)).astype("float32")
    path = raster(img)
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 5), input_tile_size=tile, input_overlap_size=overlap,
                            output_bands={"mean": "float32"})
    out = model.predict_image(path).to_numpy()[0]
    np.testing.assert_allclose(out, full_mean(img, 5), rtol=1e-5, atol=1e-5)


def test_too_small_overlap_shows_seams(tmp_path, raster):
    """The exactness above is not vacuous: without enough overlap, tile edges differ."""
    img = np.random.default_rng(2).random((1, 64, 64)).astype("float32") + 1
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 5), input_tile_size=16, input_overlap_size=1)
    out = model.predict_image(raster(img)).to_numpy()[0]
    assert not np.allclose(out, full_mean(img, 5), atol=1e-3)


def test_reflect_padding_matches_a_reflected_whole_raster(tmp_path, raster):
    img = np.random.default_rng(3).random((1, 50, 70)).astype("float32")
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 5, padding=False), input_tile_size=16,
                            input_overlap_size=2, padding="reflect", output_bands={"mean": "float32"})
    out = model.predict_image(raster(img)).to_numpy()[0]
    expected = uniform_filter(img[0].astype(np.float64), size=5, mode="mirror")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_total_overlap_mode(tmp_path, raster):
    img = np.random.default_rng(4).random((1, 60, 45)).astype("float32")
    onnx = mean_conv(tmp_path / "m.onnx", 1, 5)
    a = Model.from_onnx(onnx, input_tile_size=16, input_overlap_size=4, overlap_mode="total")
    b = Model.from_onnx(onnx, input_tile_size=16, input_overlap_size=2)
    pa, pb = a.predict_image(raster(img)), b.predict_image(raster(img))
    np.testing.assert_array_equal(pa.to_numpy(), pb.to_numpy())
    np.testing.assert_allclose(pa.to_numpy()[0], full_mean(img, 5), atol=1e-5)


def test_downsampling_model_gives_the_coarser_grid(tmp_path, raster):
    img = np.random.default_rng(5).random((1, 64, 96)).astype("float32")
    path = raster(img, transform=from_origin(1000, 2000, 10, 10))
    model = Model.from_onnx(avgpool(tmp_path / "p.onnx", 1, 2), input_tile_size=32, output_tile_size=16)
    pred = model.predict_image(path)
    assert pred.grid.shape == (32, 48)
    assert pred.grid.transform == from_origin(1000, 2000, 20, 20)
    expected = img[0].reshape(32, 2, 48, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(pred.to_numpy()[0], expected, rtol=1e-6)


def test_downsampling_with_overlap_crops_the_scaled_halo(tmp_path, raster):
    img = np.random.default_rng(6).random((1, 64, 64)).astype("float32")
    model = Model.from_onnx(avgpool(tmp_path / "p.onnx", 1, 2), input_tile_size=16, input_overlap_size=4,
                            output_tile_size=8)
    expected = img[0].reshape(32, 2, 32, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(model.predict_image(raster(img)).to_numpy()[0], expected, rtol=1e-6)


def test_upsampling_model_gives_the_finer_grid(tmp_path, raster):
    img = np.random.default_rng(7).random((1, 40, 30)).astype("float32")
    path = raster(img, transform=from_origin(0, 400, 10, 10))
    model = Model.from_onnx(upsample(tmp_path / "u.onnx", 1, 2), input_tile_size=16, input_overlap_size=2,
                            output_tile_size=32)
    pred = model.predict_image(path)
    assert pred.grid.shape == (80, 60)
    assert pred.grid.transform == from_origin(0, 400, 5, 5)
    np.testing.assert_array_equal(pred.to_numpy()[0], img[0].repeat(2, 0).repeat(2, 1))


def test_per_band_and_stacked_layouts_agree(tmp_path, raster):
    img = np.random.default_rng(8).random((3, 37, 41)).astype("float32")
    path = raster(img, descriptions=["red", "green", "nir"])
    w = [0.5, -2.0, 3.0]
    per_band = Model.from_onnx(per_band_sum(tmp_path / "b.onnx", ["red", "green", "nir"], w), input_tile_size=16)
    nchw = Model.from_onnx(linear_1x1(tmp_path / "c.onnx", w, layout="NCHW"), input_tile_size=16)
    nhwc = Model.from_onnx(linear_1x1(tmp_path / "h.onnx", w, layout="NHWC"), input_tile_size=16)
    a, b, c = (m.predict_image(path).to_numpy() for m in (per_band, nchw, nhwc))
    assert per_band.predict_image(path).inputs.layout == "bands"
    assert nchw.predict_image(path).inputs.layout == "NCHW"
    assert nhwc.predict_image(path).inputs.layout == "NHWC"
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_allclose(a[0], np.tensordot(w, img, axes=1), rtol=1e-5, atol=1e-6)


def test_coordinate_image_round_trips_through_an_identity_model(raster):
    """Each pixel encodes its own position, so any misplaced tile shows up."""
    from conftest import coord_image

    img = coord_image(53, 71, bands=3)
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=(16, 8), input_overlap_size=3,
                                output_bands={"row": "float32", "col": "float32", "code": "float32"})
    np.testing.assert_array_equal(model.predict_image(raster(img)).to_numpy(), img)


def test_masks_nodata_and_fill_value(raster):
    img = np.arange(40 * 40, dtype="float32").reshape(1, 40, 40) + 1
    img[0, 5, 7] = -9999  # nodata pixel
    img[0, 20:40, 20:40] = -9999  # a fully masked tile (tile 20)
    seen = []

    def echo(x):
        seen.append(x.copy())
        return x

    model = Model.from_callable(echo, layout="NCHW", input_tile_size=20, input_overlap_size=1, fill_value=0,
                                output_bands={"echo": "float32"}, nodata=-1)
    out = model.predict_image(raster(img, nodata=-9999)).to_numpy()[0]
    assert out[5, 7] == -1 and (out[20:, 20:] == -1).all()
    valid = img[0] != -9999
    np.testing.assert_array_equal(out[valid], img[0][valid])
    batches = np.concatenate(seen)
    assert batches.shape[0] == 3  # the fully masked tile never reached the model
    assert (batches != -9999).all()  # masked pixels were sent as the fill value
    assert batches[0, 0, 6, 8] == 0  # pixel (5, 7) in the padded tile (overlap 1)


def test_mask_is_the_minimum_over_each_output_pixels_footprint(raster, tmp_path):
    img = np.ones((2, 32, 32), dtype="float32")
    img[0, 3, 5] = -1  # band 1 masked here
    img[1, 10, 10] = -1  # band 2 masked here
    model = Model.from_onnx(avgpool(tmp_path / "p.onnx", 2, 4), input_tile_size=16, output_tile_size=4)
    out = model.predict_image(raster(img, nodata=-1)).to_numpy()[0]
    expected = np.ones((8, 8), bool)
    expected[0, 1] = expected[2, 2] = False
    np.testing.assert_array_equal(~np.isnan(out), expected)


def test_cosine_blend_is_seamless_and_exact_for_a_pointwise_model(tmp_path, raster):
    img = np.random.default_rng(9).random((2, 70, 90)).astype("float32")
    onnx = linear_1x1(tmp_path / "l.onnx", [1.0, 2.0])
    for blend in ("cosine", "hann"):
        model = Model.from_onnx(onnx, input_tile_size=24, input_overlap_size=6, blend=blend)
        out = model.predict_image(raster(img)).to_numpy()[0]
        np.testing.assert_allclose(out, img[0] + 2 * img[1], rtol=1e-5)


def test_cosine_blend_averages_overlapping_tiles(tmp_path, raster):
    """A model whose answer depends on the tile position: blending mixes neighbours in the overlap only."""
    img = np.zeros((1, 32, 64), dtype="float32")
    calls = iter(range(100))

    def tile_id(x):
        return np.stack([np.full(x.shape[1:], float(next(calls)), dtype="float32") for _ in x])

    model = Model.from_callable(tile_id, layout="NCHW", input_tile_size=32, input_overlap_size=4, blend="cosine",
                                batch_size=1, output_bands={"v": "float32"})
    out = model.predict_image(raster(img)).to_numpy()[0]
    assert (out[:, :28] == 0).all() and (out[:, 36:] == 1).all()
    ramp = out[0, 28:36]
    assert np.all(np.diff(ramp) > 0) and 0 < ramp[0] < 0.5 < ramp[-1] < 1


def test_blend_needs_float_outputs(tmp_path, raster):
    model = Model.from_onnx(argmax_classes(tmp_path / "a.onnx", 2), input_tile_size=16, input_overlap_size=2,
                            blend="cosine", output_bands={"cls": "uint8"})
    with pytest.raises(tilecast.SpecError, match="float"):
        model.predict_image(raster(np.zeros((2, 20, 20), "float32"))).to_numpy()


def test_classes_vector_outputs_and_cog_layout(tmp_path, raster):
    img = np.random.default_rng(10).random((3, 1100, 1030)).astype("float32")
    path = raster(img)
    model = Model.from_onnx(argmax_classes(tmp_path / "a.onnx", 3), input_tile_size=256,
                            output_bands={"cls": {"type": "uint8", "classes": ["a", "b", "c"],
                                                  "colors": [[255, 0, 0], [0, 255, 0], [0, 0, 255]]}})
    out = model.predict_image(path).to_geotiff(tmp_path / "cls.tif")
    with rasterio.open(out) as ds, rasterio.open(path) as src:
        assert ds.crs == src.crs and ds.transform == src.transform
        assert ds.dtypes == ("uint8",) and ds.nodata == 255
        assert ds.descriptions == ("cls",)
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert ds.profile["tiled"] and ds.block_shapes[0] == (512, 512)
        assert ds.overviews(1) == [2, 4]
        assert "NEAREST" in ds.tags(ns="IMAGE_STRUCTURE").get("OVERVIEW_RESAMPLING", "NEAREST")
        assert ds.compression.name.lower() == "deflate"
        assert json.loads(ds.tags(1)["class_names"]) == {"0": "a", "1": "b", "2": "c"}
        assert ds.colormap(1)[1][:3] == (0, 255, 0)
        np.testing.assert_array_equal(ds.read(1), img.argmax(axis=0))


def test_vector_output_becomes_one_band_per_element(tmp_path, raster):
    img = np.random.default_rng(11).random((2, 20, 20)).astype("float32")
    model = Model.from_callable(lambda x: x[:, ::-1], layout="NCHW", input_tile_size=8,
                                output_bands={"probs": {"type": "float32", "dimensions": 1}})
    pred = model.predict_image(raster(img))
    assert pred.profile.band_names == ("probs_0", "probs_1")
    np.testing.assert_array_equal(pred.to_numpy(), img[::-1])


def test_append_input_gives_earth_engines_merged_result(tmp_path, raster):
    img = np.random.default_rng(12).random((2, 30, 30)).astype("float32")
    model = Model.from_onnx(linear_1x1(tmp_path / "l.onnx", [1.0, 1.0]), input_tile_size=16,
                            output_bands={"sum": "float32"})
    pred = model.predict_image(raster(img, descriptions=["a", "b"]), append_input=True)
    assert pred.profile.band_names == ("a", "b", "sum")
    out = pred.to_numpy()
    np.testing.assert_array_equal(out[:2], img)
    np.testing.assert_allclose(out[2], img.sum(0), rtol=1e-6)


def test_bounds_and_windows_select_a_sub_region(tmp_path, raster):
    img = np.random.default_rng(13).random((1, 100, 100)).astype("float32")
    path = raster(img, transform=from_origin(0, 1000, 10, 10))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1)
    full = model.predict_image(path).to_numpy()[0]
    sub = model.predict_image(path, bounds=(205, 395, 505, 795))  # rounds outward to whole pixels
    assert sub.grid.transform == from_origin(200, 800, 10, 10) and sub.grid.shape == (41, 31)
    np.testing.assert_allclose(sub.to_numpy()[0], full[20:61, 20:51], atol=1e-6)
    win = model.predict_image(path, window=((20, 61), (20, 51)))
    np.testing.assert_array_equal(win.to_numpy(), sub.to_numpy())
    # the same bounds given in another CRS select the same pixels
    from rasterio.warp import transform_bounds

    ll = transform_bounds("EPSG:32633", "EPSG:4326", 210, 400, 500, 790)
    lonlat = model.predict_image(path, bounds=ll, bounds_crs="EPSG:4326")
    assert lonlat.grid.transform.c <= 210 and lonlat.grid.transform.f >= 790


def test_fix_input_proj_warps_window_by_window(tmp_path, raster):
    """Windowed warping through the model equals reprojecting the whole raster first."""
    from rasterio.warp import Resampling, reproject

    from conftest import coord_image

    img = coord_image(120, 150, bands=2)
    path = raster(img, crs="EPSG:32633", transform=from_origin(500000, 4600000, 30, 30))
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=32, input_overlap_size=4,
                                crs="EPSG:3035", resolution=45, fix_input_proj=True, resampling="nearest",
                                output_bands={"row": "float32", "col": "float32"})
    pred = model.predict_image(path)
    grid = pred.grid
    assert grid.crs.to_epsg() == 3035 and grid.resolution == (45, 45)
    got = pred.to_numpy()
    expected = np.full((2, *grid.shape), np.nan, dtype="float32")
    with rasterio.open(path) as src:
        for b in range(2):
            reproject(rasterio.band(src, b + 1), expected[b], dst_transform=grid.transform, dst_crs=grid.crs,
                      resampling=Resampling.nearest, dst_nodata=np.nan)
    both = ~np.isnan(expected[0]) & ~np.isnan(got[0])
    assert both.mean() > 0.5
    np.testing.assert_array_equal(got[:, both], expected[:, both])


def test_proj_without_fix_input_proj_warns_and_keeps_the_native_grid(tmp_path, raster):
    img = np.ones((1, 20, 20), "float32")
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=8, crs="EPSG:4326",
                                output_bands={"v": "float32"})
    with pytest.warns(tilecast.TilecastWarning, match="fix_input_proj"):
        pred = model.predict_image(raster(img))
    assert pred.grid.crs.to_epsg() == 32633


def test_xarray_input_and_output(tmp_path, raster):
    rioxarray = pytest.importorskip("rioxarray")
    img = np.random.default_rng(14).random((2, 30, 40)).astype("float32")
    path = raster(img)
    da = rioxarray.open_rasterio(path)
    model = Model.from_onnx(linear_1x1(tmp_path / "l.onnx", [1.0, -1.0]), input_tile_size=16)
    out = model.predict_image(da).to_xarray()
    ref = model.predict_image(path).to_xarray()
    np.testing.assert_array_equal(out.values, ref.values)
    assert out.rio.crs == da.rio.crs and out.rio.transform() == da.rio.transform()
    odc = pytest.importorskip("odc.geo.xr")  # noqa: F841
    assert out.odc.geobox.crs == da.rio.crs
    assert out.odc.geobox.affine == da.rio.transform()


def test_input_properties_are_replicated_into_every_tile(tmp_path, raster):
    img = np.ones((1, 20, 20), "float32")
    path = raster(img, descriptions=["x"], tags={"gain": "2.5"})

    def scaled(batch):
        assert batch["gain"].shape == (batch["x"].shape[0],)
        return batch["x"][..., 0] * batch["gain"][:, None, None]

    model = Model.from_callable(scaled, input_tile_size=8, input_properties=["gain"],
                                output_bands={"y": "float32"})
    np.testing.assert_array_equal(model.predict_image(path).to_numpy()[0], 2.5)


def test_input_type_override_and_array_bands(tmp_path, raster):
    img = np.arange(3 * 12 * 12, dtype="uint16").reshape(3, 12, 12)
    seen = {}

    def fn(array):  # one input: the function gets the array itself
        seen["array"] = (array.dtype, array.shape)
        return array.sum(axis=-1).astype("float64")

    model = Model.from_callable(fn, input_tile_size=12, input_shapes={"array": [3]},
                                input_type_override={"array": "float32"}, output_bands={"s": "float64"})
    out = model.predict_image(raster(img)).to_numpy()[0]
    assert seen["array"] == (np.dtype("float32"), (1, 12, 12, 3))
    np.testing.assert_array_equal(out, img.sum(axis=0))


def test_per_pixel_tabular_model(tmp_path, raster):
    """A (pixels, bands) model such as scikit-learn converted to ONNX runs over every pixel."""
    from onnx import TensorProto, helper, numpy_helper

    from onnx_models import _save

    w = np.array([[1.0], [10.0]], np.float32)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 2])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])
    onnx_path = _save(helper.make_graph([helper.make_node("MatMul", ["X", "w"], ["Y"])], "tab", [x], [y],
                                        [numpy_helper.from_array(w, "w")]), tmp_path / "tab.onnx")
    img = np.random.default_rng(15).random((2, 33, 29)).astype("float32")
    model = Model.from_onnx(onnx_path, input_tile_size=16)
    pred = model.predict_image(raster(img))
    assert pred.inputs.layout == "pixels"
    np.testing.assert_allclose(pred.to_numpy()[0], img[0] + 10 * img[1], rtol=1e-6)


def test_batch_size_does_not_change_results(tmp_path, raster):
    img = np.random.default_rng(16).random((1, 50, 50)).astype("float32")
    onnx = mean_conv(tmp_path / "m.onnx", 1, 3)
    outs = [Model.from_onnx(onnx, input_tile_size=8, input_overlap_size=1, batch_size=b).predict_image(raster(img))
            .to_numpy() for b in (1, 3, 64)]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("streams", [1, 2])
def test_a_fixed_batch_size_is_the_models_and_short_batches_are_filled(tmp_path, raster, streams):
    """A model exported with batch 4 gets exactly 4 tiles per call: 9 tiles make 3 calls, the last one filled with
    zero tiles whose outputs are dropped; the user's batch_size gives way to the model's."""
    img = np.random.default_rng(18).random((1, 48, 48)).astype("float32")
    want = Model.from_onnx(mean_conv(tmp_path / "any.onnx", 1, 3), input_tile_size=16, input_overlap_size=1)
    fixed = Model.from_onnx(mean_conv(tmp_path / "b4.onnx", 1, 3, batch=4), input_tile_size=16, input_overlap_size=1,
                            batch_size=2, threads=2, streams=streams)
    pred = fixed.predict_image(raster(img))
    assert (pred.inputs.batch_size, pred.inputs.fixed_batch) == (4, True)
    np.testing.assert_array_equal(pred.to_numpy(), want.predict_image(raster(img)).to_numpy())


def test_fixed_tile_size_is_read_from_the_model(tmp_path, raster):
    onnx = mean_conv(tmp_path / "m.onnx", 1, 3, hw=(20, 20))
    model = Model.from_onnx(onnx, input_overlap_size=2)
    assert model.spec.geometry.tile == (16, 16)


def test_class_names_and_colours_keyed_by_pixel_value(tmp_path, raster):
    img = np.random.default_rng(17).random((2, 16, 16)).astype("float32")
    model = Model.from_callable(lambda x: x.argmax(1) + 1, layout="NCHW", input_tile_size=16,
                                output_bands={"c": {"type": "uint8", "classes": {1: "land", 2: "water"},
                                                    "colors": [[0, 200, 0], [0, 0, 200]]}})
    out = model.predict_image(raster(img)).to_geotiff(tmp_path / "c.tif")
    with rasterio.open(out) as ds:
        assert json.loads(ds.tags(1)["class_names"]) == {"1": "land", "2": "water"}
        assert ds.colormap(1)[2][:3] == (0, 0, 200) and ds.colormap(1)[1][:3] == (0, 200, 0)
