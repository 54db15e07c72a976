"""Every documented failure gives a tilecast error that names the problem and the fix, and leaves no file behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

import tilecast
from onnx_models import argmax_classes, linear_1x1, mean_conv, per_band_sum
from tilecast import Model


def test_the_tree_mixes_in_builtins():
    assert issubclass(tilecast.SourceNotFoundError, FileNotFoundError)
    assert issubclass(tilecast.OutputExistsError, FileExistsError)
    assert issubclass(tilecast.BandMismatchError, ValueError)
    assert issubclass(tilecast.MissingExtraError, ImportError)
    for name in tilecast.errors.__all__:
        cls = getattr(tilecast, name)
        assert issubclass(cls, (tilecast.TilecastError, tilecast.TilecastWarning))
        assert name in tilecast.errors.__doc__


def test_missing_file(tmp_path):
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx"), input_tile_size=8)
    with pytest.raises(tilecast.SourceNotFoundError, match="not found"):
        model.predict_image(tmp_path / "nope.tif")


def test_missing_or_corrupted_model(tmp_path):
    with pytest.raises(tilecast.ModelLoadError, match="not found"):
        Model.from_onnx(tmp_path / "nope.onnx", input_tile_size=8)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(tilecast.ModelLoadError, match=r"valid \.onnx"):
        Model.from_onnx(bad, input_tile_size=8)


def test_not_georeferenced(tmp_path):
    path = tmp_path / "plain.tif"
    with rasterio.open(path, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as dst:
        dst.write(np.zeros((1, 8, 8), "float32"))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx"), input_tile_size=8)
    with pytest.raises(tilecast.NotGeoreferencedError, match="georeference"):
        model.predict_image(path)


def test_band_count_mismatch(tmp_path, raster):
    model = Model.from_onnx(linear_1x1(tmp_path / "l.onnx", [1, 1, 1]), input_tile_size=8)
    with pytest.raises(tilecast.BandMismatchError, match="takes 3 bands but 2 were selected"):
        model.predict_image(raster(np.zeros((2, 8, 8), "float32")))


def test_band_name_mismatch(tmp_path, raster):
    model = Model.from_onnx(per_band_sum(tmp_path / "b.onnx", ["red", "nir"], [1, 1]), input_tile_size=8)
    with pytest.raises(tilecast.BandMismatchError, match=r"\['red', 'nir'\].*\['b1', 'b2'\]"):
        model.predict_image(raster(np.zeros((2, 8, 8), "float32")))
    with pytest.raises(tilecast.BandMismatchError, match="not in the raster"):
        model.predict_image(raster(np.zeros((2, 8, 8), "float32")), bands=["red", "swir"])
    with pytest.raises(tilecast.BandMismatchError, match="out of range"):
        model.predict_image(raster(np.zeros((2, 8, 8), "float32")), bands=[3])


def test_tile_size_the_model_rejects(tmp_path, raster):
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", hw=(64, 64)), input_tile_size=64, input_overlap_size=8)
    with pytest.raises(tilecast.TileSizeError, match="use --tile 48,48 with --overlap 8,8"):
        model.predict_image(raster(np.zeros((1, 100, 100), "float32")))


def test_wrong_output_shape(tmp_path, raster):
    model = Model.from_callable(lambda x: x[:, :, :5, :5], layout="NCHW", input_tile_size=8,
                                output_bands={"v": "float32"})
    with pytest.raises(tilecast.OutputShapeError, match=r"5 x 5 pixels per tile.*8 x 8"):
        model.predict_image(raster(np.zeros((1, 16, 16), "float32"))).to_numpy()


def test_nodata_not_representable(tmp_path, raster):
    model = Model.from_onnx(argmax_classes(tmp_path / "a.onnx", 2), input_tile_size=8,
                            output_bands={"c": "uint8"}, nodata=-1)
    with pytest.raises(tilecast.NodataError, match="not representable in uint8"):
        model.predict_image(raster(np.zeros((2, 8, 8), "float32"))).to_numpy()


def test_out_of_range_cast_is_an_error_not_wrapping(tmp_path, raster):
    model = Model.from_callable(lambda x: x * 1000, layout="NCHW", input_tile_size=8, output_bands={"v": "uint8"})
    with pytest.raises(tilecast.CastError, match=r"do not fit uint8.*wider"):
        model.predict_image(raster(np.ones((1, 8, 8), "float32"))).to_numpy()


def test_output_exists_and_overwrite(tmp_path, raster):
    path = raster(np.ones((1, 8, 8), "float32"))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx"), input_tile_size=8)
    out = tmp_path / "out.tif"
    out.write_bytes(b"precious")
    with pytest.raises(tilecast.OutputExistsError, match="overwrite"):
        model.predict_image(path).to_geotiff(out)
    assert out.read_bytes() == b"precious"
    model.predict_image(path).to_geotiff(out, overwrite=True)
    with rasterio.open(out) as ds:
        assert ds.count == 1


def test_unknown_crs(tmp_path, raster):
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx"), input_tile_size=8, crs="EPSG:999999",
                            fix_input_proj=True)
    with pytest.raises(tilecast.UnknownCRSError, match="EPSG code"):
        model.predict_image(raster(np.ones((1, 8, 8), "float32")))


def test_failed_run_leaves_no_file(tmp_path, raster):
    path = raster(np.ones((1, 64, 64), "float32"))
    calls = []

    def flaky(x):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-run
        return x

    model = Model.from_callable(flaky, layout="NCHW", input_tile_size=8, batch_size=1, output_bands={"v": "float32"})
    with pytest.raises(KeyboardInterrupt):
        model.predict_image(path).to_geotiff(tmp_path / "out.tif")
    assert os.listdir(tmp_path) == [os.path.basename(path)] or sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(path)]
    )


def test_bad_parameters(tmp_path):
    onnx = mean_conv(tmp_path / "m.onnx")
    with pytest.raises(tilecast.SpecError, match="input_tile_size is required"):
        Model.from_onnx(onnx)
    with pytest.raises(tilecast.SpecError, match="NAME:DTYPE"):
        Model.from_onnx(onnx, input_tile_size=8, output_bands=["oops"])
    with pytest.raises(tilecast.SpecError, match=r"not a numeric dtype|not a dtype"):
        Model.from_onnx(onnx, input_tile_size=8, output_bands={"a": "text"})
    with pytest.raises(tilecast.SpecError, match="needs an overlap"):
        Model.from_onnx(onnx, input_tile_size=8, blend="cosine")
    with pytest.raises(tilecast.SpecError, match="layout"):
        Model.from_onnx(onnx, input_tile_size=8, layout="CHW")
