"""TensorFlow Lite models made by the real converter (``tf.lite.TFLiteConverter``) give the outputs of the ONNX export
of the same weights; LiteRT runs them without importing TensorFlow.

The weights come from one small torch net: exported to ONNX, and copied into a Keras model (NHWC) that the converter
turns into ``.tflite`` in a subprocess (TensorFlow stays out of the test process).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
if importlib.util.find_spec("tensorflow") is None:
    pytest.skip("the TFLite converter needs TensorFlow", allow_module_level=True)

import tilecast  # noqa: E402
from conftest import write_raster  # noqa: E402
from tilecast.card import detect_format  # noqa: E402
from tilecast.errors import MissingExtraError  # noqa: E402
from tilecast.runtimes import tflite  # noqa: E402

PARAMS = dict(input_tile_size=16, input_overlap_size=3, batch_size=5)
HAS_LITERT = importlib.util.find_spec("ai_edge_litert") is not None

CONVERT = """
import sys, numpy as np, tensorflow as tf
w = np.load(sys.argv[1])
inp = tf.keras.Input((None, None, 3), name="image")
x = tf.keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
out = tf.keras.layers.Conv2D(2, 1, name="c2")(x)
model = tf.keras.Model(inp, out)
model.get_layer("c1").set_weights([w["k1"], w["b1"]])
model.get_layer("c2").set_weights([w["k2"], w["b2"]])
converter = tf.lite.TFLiteConverter.from_keras_model(model)
if sys.argv[3] == "int8":
    rng = np.random.default_rng(0)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.uniform(0, 1, (1, 16, 16, 3)).astype("float32")]
                                                for _ in range(32))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
open(sys.argv[2], "wb").write(converter.convert())
"""


def convert(d: Path, name: str, kind: str = "float") -> Path:
    out = d / f"{name}.tflite"
    subprocess.run([sys.executable, "-c", CONVERT, str(d / "weights.npz"), str(out), kind], check=True,
                   capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("tflite")
    torch.manual_seed(7)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1)).eval()
    torch.onnx.export(net, (torch.zeros(1, 3, 22, 22),), str(d / "net.onnx"), input_names=["image"],
                      output_names=["scores"], dynamic_axes={"image": {0: "n", 2: "h", 3: "w"}}, dynamo=False)
    c1, c2 = net[0], net[2]
    np.savez(d / "weights.npz",  # torch (out, in, kh, kw) -> Keras (kh, kw, in, out)
             k1=c1.weight.detach().numpy().transpose(2, 3, 1, 0), b1=c1.bias.detach().numpy(),
             k2=c2.weight.detach().numpy().transpose(2, 3, 1, 0), b2=c2.bias.detach().numpy())
    image = write_raster(d / "in.tif", np.random.default_rng(2).uniform(0, 1, (3, 41, 53)).astype(np.float32))
    return d, convert(d, "net"), image


def onnx_run(d: Path, image: str) -> np.ndarray:
    with tilecast.Model.from_onnx(d / "net.onnx", **PARAMS) as m:
        return m.predict_image(image).to_numpy()


def test_tflite_equals_onnx_of_the_same_weights(models):
    d, model_path, image = models
    assert detect_format(model_path) == "tflite"
    with tilecast.Model.load(model_path, **PARAMS) as model:
        assert model.signature.input_names == ["image"]
        assert model.runtime.backend == ("LiteRT" if HAS_LITERT else "TensorFlow")
        out = model.predict_image(image).to_numpy()
    expected = onnx_run(d, image)
    assert out.shape == expected.shape == (2, 41, 53)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 0.1


def test_int8_model_is_quantized_and_dequantized(models):
    d, _, image = models
    with tilecast.Model.load(convert(d, "int8", "int8"), **PARAMS) as model:
        assert model.signature.inputs[0].dtype == np.float32  # the engine sends floats; the runtime quantizes
        out = model.predict_image(image).to_numpy()
    expected = onnx_run(d, image)
    assert out.dtype == np.float32
    span = float(expected.max() - expected.min())
    assert np.abs(out - expected).max() < 0.05 * span  # int8 steps, not a wrong scale or zero point
    assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.99


@pytest.mark.skipif(not HAS_LITERT, reason="ai-edge-litert is not installed (pip install 'tilecast[tflite]')")
def test_litert_runs_without_tensorflow(models):
    _, model_path, _ = models
    code = (
        "import sys, numpy as np\n"
        "from tilecast.runtimes.tflite import TFLiteRuntime\n"
        f"rt = TFLiteRuntime({str(model_path)!r})\n"
        "out = rt.run({'image': np.ones((2, 9, 9, 3), np.float32)})\n"
        "print(rt.backend, out['output_0'].shape, 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert result.stdout.split("\n")[0] == "LiteRT (2, 9, 9, 2) False"


def test_missing_interpreter_names_the_extra(models, monkeypatch):
    _, model_path, _ = models
    monkeypatch.setattr(tflite, "_INTERPRETERS", (("tilecast_no_such_module", "none"),))
    with pytest.raises(MissingExtraError, match=r"tilecast\[tflite\]"):
        tflite.TFLiteRuntime(model_path)


def test_info_and_serve_open_the_model(models):
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from click.testing import CliRunner

    from test_server import tilecast_serve
    from tilecast.cli import main

    d, model_path, _ = models
    result = CliRunner().invoke(main, ["info", str(model_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["format"] == "tflite"
    assert [(i["name"], i["shape"]) for i in info["inputs"]] == [("image", "?x?x?x3")]
    batch = np.random.default_rng(4).uniform(0, 1, (2, 12, 12, 3)).astype(np.float32)
    with tilecast_serve(str(model_path)) as (_, base, _), \
            tilecast.Model.from_endpoint(base + "/v2/models/net", **PARAMS) as remote:
        out = remote.runtime.run({"image": batch})["output_0"]
    with tilecast.Model.from_onnx(d / "net.onnx", **PARAMS) as reference:
        expected = reference.runtime.run({"image": batch.transpose(0, 3, 1, 2)})["scores"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
