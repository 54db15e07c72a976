"""``Model.from_ai_platform_predictor``: Earth Engine's ``fromAiPlatformPredictor`` URL, and predictions through a
real ``tilecast serve`` on loopback (reached with ``url=``) equal to the local run of the same model."""

from __future__ import annotations

import numpy as np
import pytest

import tilecast
from conftest import coord_image, write_raster
from onnx_models import per_band_sum
from tilecast.errors import SpecError
from tilecast.model import ai_platform_url

BANDS = ["B1", "B2", "B3"]
PARAMS = dict(input_tile_size=24, input_overlap_size=4, batch_size=6)


@pytest.mark.parametrize(("args", "url"), [
    (("proj-1", "landcover", "v2", "europe-west4"),
     "https://europe-west4-ml.googleapis.com/v1/projects/proj-1/models/landcover/versions/v2:predict"),
    (("proj-1", "landcover"), "https://us-central1-ml.googleapis.com/v1/projects/proj-1/models/landcover:predict"),
    (("proj-1", "landcover", None, None),
     "https://us-central1-ml.googleapis.com/v1/projects/proj-1/models/landcover:predict"),
])
def test_url(args, url):
    assert ai_platform_url(*args) == url


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model_name": "m"}, "needs project_id and model_name"),
    ({"project_id": "p"}, "needs project_id and model_name"),
    ({"project_id": "p", "model_name": "a/b"}, "model_name 'a/b' is not a valid name"),
    ({"project_id": "p", "model_name": "m", "region": "us central"}, "region"),
    ({"project_id": "p", "project_name": "q", "model_name": "m"}, "differ"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(SpecError, match=match):
        tilecast.Model.from_ai_platform_predictor(token="t", input_tile_size=8, **kwargs)


def test_url_override_and_deprecated_project_name():
    with pytest.warns(DeprecationWarning, match="project_id"), tilecast.Model.from_ai_platform_predictor(
            project_name="p", model_name="m", version="3", url="http://127.0.0.1:9/", token="t",
            input_tile_size=8) as model:
        assert model.runtime.endpoint.infer_url == "http://127.0.0.1:9/v1/projects/p/models/m/versions/3:predict"
        assert model.runtime.endpoint.protocol == "vertex"
    with tilecast.Model.from_ai_platform_predictor("p", "m", token="t", input_tile_size=8) as model:
        assert model.runtime.endpoint.infer_url == ai_platform_url("p", "m")


@pytest.mark.parametrize("fmt", ["SERIALIZED_TF_TENSORS", "RAW_JSON"])
def test_predictions_through_tilecast_serve(tmp_path, fmt):
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from test_server import TOKEN, tilecast_serve

    per_band_sum(tmp_path / "pb.onnx", BANDS, [1.0, -2.0, 0.5])
    image = write_raster(tmp_path / "in.tif", coord_image(50, 70, bands=3) / 100, descriptions=BANDS)
    with tilecast.Model.from_onnx(tmp_path / "pb.onnx", **PARAMS) as local:
        expected = local.predict_image(image).to_numpy()
    with tilecast_serve(str(tmp_path / "pb.onnx"), token=TOKEN) as (_, base, _), \
            tilecast.Model.from_ai_platform_predictor(project_id="p", model_name="pb", version="1",
                                                      url=base + "/v1/models/pb:predict", payload_format=fmt,
                                                      token=TOKEN, max_payload_bytes=100_000, **PARAMS) as model:
        got = model.predict_image(image).to_numpy()
    assert np.array_equal(got, expected)
    assert np.abs(expected).max() > 0
