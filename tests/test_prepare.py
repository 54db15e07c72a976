"""``tilecast prepare`` (Earth Engine's ``model prepare``) on a small Keras model; the result serves EE payloads
through TensorFlow itself and through ``tilecast serve``."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import tilecast  # noqa: E402
from conftest import coord_image, write_raster  # noqa: E402
from tilecast.cli import main  # noqa: E402
from tilecast.errors import SpecError  # noqa: E402
from tilecast.payloads import b64_to_tensor, tensor_to_b64  # noqa: E402


@pytest.fixture(scope="module")
def keras_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("prepare")
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), name="image")
    out = keras.layers.Conv2D(2, 1, name="probs", activation="softmax")(inp)
    model = keras.Model(inp, out)
    model.export(str(d / "src"), verbose=False)
    return d, model


def test_prepare_wraps_the_signature(keras_model):
    d, model = keras_model
    res = CliRunner().invoke(main, ["prepare", "--source-dir", str(d / "src"), "--dest-dir", str(d / "ee"),
                                    "--input", '{"serving_default_image:0": "array"}',
                                    "--output", '{"StatefulPartitionedCall:0": "probs"}'])
    assert res.exit_code == 0, res.output
    assert "ready to be hosted" in res.output
    loaded = tf.saved_model.load(str(d / "ee"))
    fn = loaded.signatures["serving_default"]
    (spec,) = fn.structured_input_signature[1].values()
    assert list(fn.structured_input_signature[1]) == ["array"] and spec.dtype == tf.string
    assert list(fn.structured_outputs) == ["probs"]
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype(np.float32)
    strings = tf.constant([tensor_to_b64(v) for v in x])  # exactly what Earth Engine sends per instance
    got = fn(array=strings)["probs"].numpy()
    decoded = np.stack([b64_to_tensor(s) for s in got])
    assert np.allclose(decoded, model.predict(x, verbose=0), atol=1e-6)
    again = CliRunner().invoke(main, ["prepare", "--source-dir", str(d / "src"), "--dest-dir", str(d / "ee"),
                                      "--input", "image", "--output", "output_0"])
    assert again.exit_code == 1 and "exists" in again.output


def test_prepare_errors(keras_model, tmp_path):
    d, _ = keras_model
    from tilecast.serve.prepare import parse_names, prepare_model

    with pytest.raises(SpecError, match="missing from graph"):
        prepare_model(d / "src", tmp_path / "x", '{"nope:0": "a"}', "output_0")
    with pytest.raises(SpecError, match="JSON"):
        parse_names("{not json", "--input")
    assert parse_names("a, b", "--output") == {"a": "a", "b": "b"}


def test_prepared_model_behind_tilecast_serve(keras_model, tmp_path):
    pytest.importorskip("uvicorn")
    from test_server import tilecast_serve

    d, model = keras_model
    if not (d / "ee").exists():
        from tilecast.serve.prepare import prepare_model

        prepare_model(d / "src", d / "ee", {"image": "array"}, {"output_0": "probs"})
    image = write_raster(tmp_path / "in.tif", coord_image(20, 24, bands=3) / 30)
    params = dict(input_tile_size=8, layout="NHWC", output_bands={"probs": {"type": "float32", "dimensions": 1}})
    expect = tilecast.Model.from_callable(lambda x: model.predict(x, verbose=0), inputs=["array"],
                                          outputs=["probs"], **params).predict_image(image).to_numpy()
    with tilecast_serve(str(d / "ee"), "--name", "ee") as (_, base, _):
        remote = tilecast.Model.from_endpoint(base + "/v1/models/ee:predict", payload_format="SERIALIZED_TF_TENSORS",
                                              **params)
        with remote:
            got = remote.predict_image(image).to_numpy()
    assert np.allclose(got, expect, atol=1e-6)
