"""Predicting through an endpoint gives exactly the local prediction, for every protocol and payload format.

The server is ``tilecast serve`` on loopback; one test points the client at KServe's own Python ModelServer
(an independent v2 implementation) when it is installed (``TILECAST_KSERVE_PYTHON``, default
``/tmp/tilecast-kserve/bin/python``: a venv with ``pip install kserve``, kept apart because it pins protobuf).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import tilecast  # noqa: E402
from conftest import coord_image, write_raster  # noqa: E402
from onnx_models import mean_conv, per_band_sum  # noqa: E402
from test_server import TOKEN, free_port, tilecast_serve  # noqa: E402
from tilecast.errors import EndpointError, TileSizeError  # noqa: E402
from tilecast.remote import RetryPolicy  # noqa: E402
from tilecast.runtimes.http import endpoint_runtime  # noqa: E402

BANDS = ["B1", "B2", "B3"]
PARAMS = dict(input_tile_size=24, input_overlap_size=4, batch_size=6)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("endpoint")
    per_band_sum(d / "pb.onnx", BANDS, [1.0, -2.0, 0.5])
    mean_conv(d / "mc.onnx", bands=3)
    image = write_raster(d / "in.tif", coord_image(70, 90, bands=3) / 100, descriptions=BANDS)
    with tilecast_serve(str(d / "pb.onnx"), str(d / "mc.onnx"), token=TOKEN, grpc=True,
                        log=d / "server.log") as (_, base, target):
        yield d, image, base, target


def local(d: Path, name: str, image: str) -> np.ndarray:
    return tilecast.Model.from_onnx(d / f"{name}.onnx", **PARAMS).predict_image(image).to_numpy()


HTTP_CASES = [
    ("/v2/models/mc", None, "V2_BINARY"),
    ("/v2/models/mc/versions/1/infer", "v2", "V2_JSON"),
    ("/v1/models/mc:predict", None, "SERIALIZED_TF_TENSORS"),
    ("/v1/models/mc:predict", "tfserving", "RAW_JSON"),
    ("/v1/models/mc:predict", None, "ND_ARRAYS"),
    ("/v1/models/mc:predict", None, "COLUMNAR_JSON"),
    ("/v1/projects/p/locations/us-central1/endpoints/7:predict", "vertex", "SERIALIZED_TF_TENSORS"),
    ("/v1/projects/p/locations/us-central1/endpoints/7:predict", "vertex", "RAW_JSON"),
]


@pytest.mark.parametrize(("route", "protocol", "fmt"), HTTP_CASES)
def test_http_matches_local(served, route, protocol, fmt):
    d, image, base, _ = served
    name = "pb" if protocol == "vertex" else "mc"  # Vertex's route serves the first model
    model = tilecast.Model.from_endpoint(base + route, protocol=protocol, payload_format=fmt, token=TOKEN,
                                         max_payload_bytes=150_000, **PARAMS)
    with model:
        remote = model.predict_image(image).to_numpy()
    assert np.array_equal(remote, local(d, name, image))


@pytest.mark.parametrize("name", ["pb", "mc"])  # one input per band (Earth Engine), one stacked NCHW input
@pytest.mark.parametrize("fmt", ["GRPC_TF_TENSORS", "GRPC_SERIALIZED_TF_TENSORS", "GRPC_SERIALIZED_TF_EXAMPLES"])
def test_grpc_matches_local(served, fmt, name):
    d, image, _, target = served
    with tilecast.Model.from_endpoint(f"grpc://{target}/{name}", payload_format=fmt, token=TOKEN, **PARAMS) as model:
        assert sorted(model.signature.input_names) == (BANDS if name == "pb" else ["image"])  # GetModelMetadata
        remote = model.predict_image(image).to_numpy()
    assert np.array_equal(remote, local(d, name, image))


def _requests(base: str) -> float:
    text = httpx.get(base + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    line = next(x for x in text.splitlines() if x.startswith('tilecast_requests_total{code="200",model="mc",'
                                                              'protocol="tfserving"}'))
    return float(line.split()[-1])


def test_requests_are_packed_under_the_payload_limit(served):
    d, image, base, _ = served
    before = _requests(base)
    runtime = endpoint_runtime(base + "/v1/models/mc:predict", token=TOKEN, max_payload_bytes=30_000, concurrency=3)
    model = tilecast.Model(runtime, **PARAMS)
    out = model.predict_image(image).to_numpy()
    assert np.array_equal(out, local(d, "mc", image))
    tiles = len(model.predict_image(image).plan)
    per_request = runtime.packer.per_request({"image": np.zeros((2, 3, 32, 32), np.float32)})
    assert 1 <= per_request < PARAMS["batch_size"]
    assert _requests(base) - before >= tiles / per_request  # several requests per batch of 6
    model.close()


def test_one_tile_over_the_limit_names_the_tile_that_fits(served):
    _, image, base, _ = served
    model = tilecast.Model.from_endpoint(base + "/v1/models/mc:predict", token=TOKEN, max_payload_bytes=20_000,
                                         output_multiplier=1.5, **PARAMS)
    with model, pytest.raises(TileSizeError, match=r"largest square tile that fits is \d+ x \d+") as info:
        model.predict_image(image).to_numpy()
    assert "max_payload_bytes=20,000" in str(info.value)


def test_missing_token_is_a_clear_error(served):
    _, _, base, _ = served
    with pytest.raises(EndpointError, match="401"):
        tilecast.Model.from_endpoint(base + "/v2/models/mc", **PARAMS)


def test_cli_predict_endpoint_writes_the_same_cog(served, tmp_path):
    d, image, base, _ = served
    from click.testing import CliRunner

    from tilecast.cli import main

    out_local = tmp_path / "local.tif"
    out_remote = tmp_path / "remote.tif"
    common = ["--tile", "24", "--overlap", "4", "-q"]
    r1 = CliRunner().invoke(main, ["predict", image, "--model", str(d / "mc.onnx"), "-o", str(out_local), *common])
    assert r1.exit_code == 0, r1.output
    r2 = CliRunner(env={"TC_TOKEN": TOKEN}).invoke(main, [
        "predict", image, "--endpoint", base + "/v2/models/mc", "--token-env", "TC_TOKEN", "--concurrency", "2",
        "--max-payload-bytes", "50000", "--header", "X-Trace:1", "-o", str(out_remote), *common])
    assert r2.exit_code == 0, r2.output
    with rasterio.open(out_local) as a, rasterio.open(out_remote) as b:
        assert np.array_equal(a.read(), b.read()) and a.transform == b.transform and a.crs == b.crs


KSERVE_MODEL = '''
import sys
import numpy as np
from kserve import InferOutput, InferResponse, Model, ModelServer


class Affine(Model):
    """out = sum of the bands * 2 + 1, channels last: an independent implementation of a tiny model."""

    def __init__(self):
        super().__init__("affine")
        self.ready = True

    def predict(self, payload, headers=None):
        arrays = [i.as_numpy() for i in payload.inputs]
        out = (sum(arrays) * 2 + 1).astype(np.float32)
        o = InferOutput(name="output", shape=list(out.shape), datatype="FP32")
        o.set_data_from_numpy(out, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[o], response_id=payload.id)


ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1).start([Affine()])
'''


@pytest.fixture(scope="module")
def kserve_server(tmp_path_factory):
    python = os.environ.get("TILECAST_KSERVE_PYTHON", "/tmp/tilecast-kserve/bin/python")
    if not Path(python).exists():
        pytest.skip(f"KServe is not installed at {python} (python -m venv DIR && DIR/bin/pip install kserve)")
    d = tmp_path_factory.mktemp("kserve")
    (d / "server.py").write_text(KSERVE_MODEL)
    port = free_port()
    log = open(d / "log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([python, str(d / "server.py"), str(port)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=d)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(base + "/v2/models/affine/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            pytest.fail("KServe did not start")
        if proc.poll() is not None:
            pytest.fail(f"KServe exited: {(d / 'log').read_text()[-2000:]}")
        yield base
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.mark.parametrize("fmt", ["V2_JSON", "V2_BINARY"])
def test_our_client_talks_to_kserve(kserve_server, fmt, tmp_path):
    image = write_raster(tmp_path / "in.tif", coord_image(40, 50, bands=2) / 10, descriptions=["a", "b"])
    params = dict(input_tile_size=16, output_bands={"output": {"type": "float32"}}, batch_size=4)
    remote = tilecast.Model.from_endpoint(kserve_server + "/v2/models/affine", payload_format=fmt,
                                          max_payload_bytes=20_000, **params)
    with remote:
        got = remote.predict_image(image).to_numpy()
    expect = tilecast.Model.from_callable(lambda b: {"output": (b["a"] + b["b"]) * 2 + 1}, inputs=["a", "b"],
                                          **params).predict_image(image).to_numpy()
    assert np.array_equal(got, expect)


def test_retry_policy_is_configurable(served):
    _, _, base, _ = served
    rt = endpoint_runtime(base + "/v2/models/mc", token=TOKEN, retry=RetryPolicy(retries=0), timeout=5)
    assert rt.signature.input_names == ["image"]
    rt.close()
    assert sys.version_info >= (3, 11)
