"""One small network in every format (ONNX, TorchScript, torch.export, Keras, SavedModel, Earth Engine-prepared
SavedModel) gives the same prediction through tilecast. Tolerance: 1e-4 absolute on outputs of order 1-10 (float32
convolutions summed in different orders)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from tests.conftest import write_raster

torch = pytest.importorskip("torch")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOL = 1e-4
rng = np.random.default_rng(0)
W1 = rng.normal(size=(4, 3, 3, 3)).astype("float32")
B1 = rng.normal(size=4).astype("float32")
W2 = rng.normal(size=(2, 4, 1, 1)).astype("float32")
B2 = rng.normal(size=2).astype("float32")


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 2, 1)
        with torch.no_grad():
            self.c1.weight.copy_(torch.from_numpy(W1))
            self.c1.bias.copy_(torch.from_numpy(B1))
            self.c2.weight.copy_(torch.from_numpy(W2))
            self.c2.bias.copy_(torch.from_numpy(B2))

    def forward(self, image):
        return self.c2(torch.relu(self.c1(image)))


def _onnx(path):
    from onnx import TensorProto, helper, numpy_helper
    from tests.onnx_models import _save

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["image", "w1", "b1"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["output"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(a, n) for a, n in ((W1, "w1"), (B1, "b1"), (W2, "w2"), (B2, "b2"))]
    return _save(helper.make_graph(nodes, "net", [x], [y], inits), path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    net = Net().eval()
    out = {"onnx": (_onnx(d / "net.onnx"), "NCHW")}
    torch.jit.save(torch.jit.script(net), str(d / "net.pt"))
    out["torchscript"] = (str(d / "net.pt"), "NCHW")
    dims = {"image": {0: torch.export.Dim("n", max=64), 2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}}
    torch.export.save(torch.export.export(net, (torch.zeros(2, 3, 16, 16),), dynamic_shapes=dims), str(d / "net.pt2"))
    out["torch.export"] = (str(d / "net.pt2"), "NCHW")
    try:
        import keras
        import tensorflow as tf
    except ImportError:
        return out
    inp = keras.Input((None, None, 3), name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    y = keras.layers.Conv2D(2, 1, name="scores")(h)
    km = keras.Model(inp, y)
    km.layers[1].set_weights([W1.transpose(2, 3, 1, 0), B1])
    km.layers[2].set_weights([W2.transpose(2, 3, 1, 0), B2])
    km.save(d / "net.keras")
    out["keras"] = (str(d / "net.keras"), "NHWC")
    km.export(str(d / "saved"), verbose=False)
    out["savedmodel"] = (str(d / "saved"), "NHWC")

    class EEPrepared(tf.Module):
        """The shape of an `earthengine model prepare` output: base64 serialized TensorProtos in and out."""

        def __init__(self, model):
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="array")])
        def serve(self, array):
            x = tf.map_fn(lambda b: tf.io.parse_tensor(tf.io.decode_base64(b), tf.float32), array,
                          fn_output_signature=tf.TensorSpec([None, None, 3], tf.float32))
            y = self.model(x)
            return {"output": tf.map_fn(lambda t: tf.io.encode_base64(tf.io.serialize_tensor(t)), y,
                                        fn_output_signature=tf.string)}

    ee = EEPrepared(km)
    tf.saved_model.save(ee, str(d / "ee"), signatures={"serving_default": ee.serve})
    out["earthengine"] = (str(d / "ee"), "NHWC")
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    data = np.random.default_rng(3).normal(size=(3, 45, 61)).astype("float32")
    return write_raster(d / "scene.tif", data)


def _predict(path, layout, scene, out):
    from tilecast.loading import load_model

    model = load_model(path, input_tile_size=16, input_overlap_size=2, layout=layout,
                       output_bands={"scores": {"type": "float32", "dimensions": 1}})
    model.predict_image(scene).to_geotiff(out)
    with rasterio.open(out) as ds:
        return ds.read()


def test_every_format_gives_the_same_prediction(models, scene, tmp_path):
    ref = _predict(*models["onnx"], scene, tmp_path / "onnx.tif")
    assert ref.shape == (2, 45, 61)
    with torch.no_grad():
        direct = Net()(torch.from_numpy(rasterio.open(scene).read()[None])).numpy()[0]
    assert np.abs(ref - direct).max() < TOL  # tiles of 16 + 2*2 halo cover the 3x3 receptive field exactly
    for fmt, (path, layout) in models.items():
        got = _predict(path, layout, scene, tmp_path / f"out_{fmt.replace('.', '_')}.tif")
        assert np.abs(got - ref).max() < TOL, fmt
    if "keras" not in models:
        pytest.skip("tensorflow not installed: only ONNX and PyTorch were compared")


def test_runtime_signatures(models):
    from tilecast.loading import open_runtime

    rt = open_runtime(models["torch.export"][0])
    assert rt.signature.inputs[0].name == "image" and rt.signature.inputs[0].shape[1] == 3
    assert open_runtime(models["torchscript"][0]).signature.input_names == ["image"]
    if "keras" in models:
        k = open_runtime(models["keras"][0])
        assert k.signature.output_names == ["scores"] and k.signature.inputs[0].shape == (None, None, None, 3)


@pytest.mark.parametrize(("fmt", "framework"), [("torchscript", "PyTorch"), ("keras", "TensorFlow")])
def test_a_batch_the_model_refuses_names_what_was_sent(models, fmt, framework):
    from tilecast.errors import TileSizeError
    from tilecast.loading import open_runtime

    if fmt not in models:
        pytest.skip("TensorFlow is not installed")
    rt = open_runtime(models[fmt][0])
    name = rt.signature.input_names[0]
    with pytest.raises(TileSizeError, match=rf"(?s)the {framework} model rejected the batch \({name}: \(2, 5, 8, 8\) "
                                            r"float32\).*Match --tile/--overlap, the layout and the dtype"):
        rt.run({name: np.zeros((2, 5, 8, 8), np.float32)})  # 5 channels where the model takes 3


def test_corrupted_torch_and_tf_files(tmp_path):
    from tilecast.errors import ModelLoadError
    from tilecast.loading import load_model

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError, match="PyTorch could not load"):
        load_model(bad)
    (tmp_path / "bad.keras").write_bytes(b"garbage")
    pytest.importorskip("tensorflow")
    with pytest.raises(ModelLoadError, match="TensorFlow could not load"):
        load_model(tmp_path / "bad.keras")


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    import builtins

    from tilecast.errors import MissingExtraError
    from tilecast.loading import load_model

    (tmp_path / "m.pt").write_bytes(b"PK")
    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real(name, *a, **k)

    monkeypatch.delitem(__import__("sys").modules, "torch", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(MissingExtraError, match=r"pip install 'tilecast\[torch\]'"):
        load_model(tmp_path / "m.pt")


def test_info_describes_every_format(models):
    import json

    from click.testing import CliRunner

    from tilecast.cli import main

    for fmt, (path, _) in models.items():
        r = CliRunner().invoke(main, ["info", path, "--json"])
        assert r.exit_code == 0, (fmt, r.output)
        info = json.loads(r.output)
        assert info["format"] == ("savedmodel" if fmt == "earthengine" else fmt)
        assert info["inputs"] and "tilecast card" in info["card"]


def test_card_embedded_in_torch_archives(models, scene, tmp_path):
    import shutil

    from click.testing import CliRunner

    from tilecast.card import card_path
    from tilecast.cli import main
    from tilecast.loading import load_model

    ref = _predict(*models["onnx"], scene, tmp_path / "ref.tif")
    for fmt in ("torchscript", "torch.export"):
        src = models[fmt][0]
        path = tmp_path / Path(src).name
        shutil.copy(src, path)
        r = CliRunner().invoke(main, ["card", str(path), "--bands", "b1,b2,b3", "--tile", "16", "--overlap", "2",
                                      "--layout", "NCHW", "--output-band", "scores:float32:1"])
        assert r.exit_code == 0, r.output
        assert "embedded it in the model" in r.output
        card_path(path).unlink()
        model = load_model(path)
        assert model.card.source == "embedded"
        out = tmp_path / f"emb_{fmt.replace('.', '_')}.tif"
        model.predict_image(scene).to_geotiff(out)
        with rasterio.open(out) as ds:
            assert np.abs(ds.read() - ref).max() < TOL, fmt
