"""Output dtypes a GeoTIFF band cannot take from tilecast (bool, float16, uint64): declared, they are a SpecError
naming the type to declare; a model's own bool or float16 outputs, undeclared, are written as uint8 and float32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import rasterio
from click.testing import CliRunner
from onnx import TensorProto, helper

from conftest import coord_image, write_raster
from test_import import predict_identity
from tilecast.cli import main
from tilecast.errors import SpecError
from tilecast.export import export_image, import_predictions


def _model(path, out_type: int, op: str) -> str:
    """band 1 of the input, cast to ``out_type`` (``Cast``) or compared with 100 (``Greater``: bool)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, None, None])
    y = helper.make_tensor_value_info("y", out_type, [None, 1, None, None])
    nodes = [helper.make_node("Slice", ["x", "s", "e", "a"], ["b1"])]
    inits = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 1), ("a", 1))]
    if op == "Cast":
        nodes.append(helper.make_node("Cast", ["b1"], ["y"], to=out_type))
    else:
        inits.append(helper.make_tensor("t", TensorProto.FLOAT, [], [100.0]))
        nodes.append(helper.make_node("Greater", ["b1", "t"], ["y"]))
    g = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return str(path)


@pytest.fixture
def image(tmp_path):
    return write_raster(tmp_path / "in.tif", coord_image(40, 30))


@pytest.mark.parametrize(("dtype", "fix"), [("bool", "uint8"), ("float16", "float32"), ("uint64", "int64")])
def test_a_declared_dtype_no_geotiff_band_takes_is_a_spec_error(tmp_path, image, dtype, fix):
    model = _model(tmp_path / "m.onnx", TensorProto.FLOAT, "Cast")
    r = CliRunner().invoke(main, ["predict", str(image), "-o", str(tmp_path / "o.tif"), "--model", model,
                                  "--output-band", f"y:{dtype}", "--tile", "16", "-q"])
    assert r.exit_code == 1, r.output
    assert "SpecError" in r.output and f"declare {fix}" in r.output and "Traceback" not in r.output
    assert not list(tmp_path.glob("o*"))


def test_an_fp16_models_output_is_written_as_float32(tmp_path):
    img = (np.arange(2 * 40 * 30).reshape(2, 40, 30) % 1024).astype(np.float32)  # exact in float16
    src = write_raster(tmp_path / "in.tif", img)
    model = _model(tmp_path / "m.onnx", TensorProto.FLOAT16, "Cast")
    r = CliRunner().invoke(main, ["predict", str(src), "-o", str(tmp_path / "o.tif"), "--model", model,
                                  "--tile", "16", "--overlap", "2", "-q"])
    assert r.exit_code == 0, r.output
    with rasterio.open(tmp_path / "o.tif") as d:
        assert d.dtypes == ("float32",)
        np.testing.assert_array_equal(d.read(1), img[0])


def test_a_bool_models_output_is_written_as_uint8(tmp_path, image):
    model = _model(tmp_path / "m.onnx", TensorProto.BOOL, "Greater")
    r = CliRunner().invoke(main, ["predict", str(image), "-o", str(tmp_path / "o.tif"), "--model", model,
                                  "--tile", "16", "-q"])
    assert r.exit_code == 0, r.output
    with rasterio.open(image) as src, rasterio.open(tmp_path / "o.tif") as d:
        assert d.dtypes == ("uint8",)
        np.testing.assert_array_equal(d.read(1), (src.read(1) > 100).astype(np.uint8))


@pytest.mark.parametrize("dtype", ["bool", "float16", "uint64"])
def test_import_refuses_such_a_dtype_before_writing(tmp_path, dtype):
    src = write_raster(tmp_path / "src.tif", coord_image(32, 32, 1))
    (tmp_path / "tiles").mkdir()
    (tmp_path / "pred").mkdir()
    res = export_image(src, tmp_path / "tiles", 16)
    preds = predict_identity(res.spec, tmp_path / "pred", 0)
    with pytest.raises(SpecError, match="cannot write as a GeoTIFF band"):
        import_predictions(preds, res.mixer, tmp_path / "o.tif", dtype=dtype)
    assert not (tmp_path / "o.tif").exists()
