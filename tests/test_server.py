"""``tilecast serve``: KServe v2 and TF Serving routes, limits, auth, errors, load, metrics and shutdown.

A widely used v2 client (``tritonclient``) and TF Serving's official gRPC stub talk to it as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from onnx_models import linear_1x1, mean_conv  # noqa: E402
from tilecast.payloads import tensor_to_b64, v2  # noqa: E402
from tilecast.runtimes.base import Signature, TensorSpec  # noqa: E402

TOKEN = "s3cret-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM a server process (tilecast serve drains and exits), and kill it if it has not exited in 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def tilecast_serve(*args: str, token: str | None = None, grpc: bool = False, log: Path | None = None,
                   timeout: float = 60.0):
    """Start ``tilecast serve ARGS`` on free loopback ports; yields (process, base_url, grpc_target)."""
    port = free_port()
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", *args, "--port", str(port)]
    env = dict(os.environ)
    if token:
        env["TILECAST_TEST_TOKEN"] = token
        cmd += ["--token-env", "TILECAST_TEST_TOKEN"]
    gport = None
    if grpc:
        gport = free_port()
        cmd += ["--grpc-port", str(gport)]
    err = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                text = log.read_text()[-2000:] if log else ""
                raise RuntimeError(f"tilecast serve exited with {proc.returncode}: {text}")
            try:
                if httpx.get(base + "/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("tilecast serve did not become ready")
            time.sleep(0.1)
        yield proc, base, (f"127.0.0.1:{gport}" if gport else None)
    finally:
        stop(proc)
        if log:
            err.close()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve")
    mean_conv(d / "mc.onnx", bands=3)
    linear_1x1(d / "lin.onnx", [1.0, 2.0, 3.0], bias=0.5, layout="NHWC")
    log = d / "server.log"
    with tilecast_serve(str(d / "mc.onnx"), f"lin={d / 'lin.onnx'}", "--max-body-bytes", "400000",
                        "--batch-timeout-ms", "2", token=TOKEN, grpc=True, log=log) as (proc, base, target):
        yield proc, base, target, log


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_health_and_metadata(server):
    _, base, _, _ = server
    assert httpx.get(base + "/v2/health/live").json() == {"live": True}  # health needs no token
    meta = httpx.get(base + "/v2/models/mc", headers=auth()).json()
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]}]
    assert meta["outputs"][0]["name"] == "mean"
    assert httpx.get(base + "/v2/models/lin/ready", headers=auth()).json()["ready"] is True
    assert "binary_tensor_data" in httpx.get(base + "/v2", headers=auth()).json()["extensions"]
    tf_meta = httpx.get(base + "/v1/models/mc/metadata", headers=auth()).json()
    sig = tf_meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["image"]["dtype"] == "DT_FLOAT"
    status = httpx.get(base + "/v1/models/mc", headers=auth()).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


def test_auth(server):
    _, base, _, _ = server
    r = httpx.get(base + "/v2/models/mc")
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"] and "token" in r.json()["error"]
    r = httpx.get(base + "/v2/models/mc", headers=auth("wrong"))
    assert r.status_code == 403 and "not valid" in r.json()["error"]


def test_body_limit(server):
    _, base, _, _ = server
    big = {"inputs": {"image": np.zeros((1, 3, 200, 200), np.float32).tolist()}}
    r = httpx.post(base + "/v1/models/mc:predict", content=json.dumps(big), headers=auth())
    assert r.status_code == 413 and "400,000" in r.json()["error"]

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(100):
            yield b" " * 10_000

    r = httpx.post(base + "/v1/models/mc:predict", content=chunks(), headers=auth())
    assert r.status_code == 413


def test_errors(server):
    _, base, _, _ = server
    x = np.zeros((1, 3, 8, 8), np.float32)
    body, headers = v2.encode_request({"image": x})
    r = httpx.post(base + "/v2/models/nope/infer", content=body, headers={**headers, **auth()})
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"] and "mc" in r.json()["error"]
    assert httpx.post(base + "/v1/models/nope:predict", json={"instances": [1]}, headers=auth()).status_code == 404
    body, headers = v2.encode_request({"wrong": x, "other": x})
    r = httpx.post(base + "/v2/models/mc/infer", content=body, headers={**headers, **auth()})
    assert r.status_code == 400 and "image" in r.json()["error"]
    body, headers = v2.encode_request({"x": np.zeros((1, 4, 8, 8), np.float32)})  # 4 bands for a 3-band model
    r = httpx.post(base + "/v2/models/lin/infer", content=body, headers={**headers, **auth()})
    assert r.status_code == 400 and "shape" in r.json()["error"]
    r = httpx.post(base + "/v1/models/mc:predict", content=b'{"instances": [', headers=auth())
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(base + "/v1/models/mc:predict", json={"instances": ["@@@"]}, headers=auth())
    assert r.status_code == 400 and "instances[0]" in r.json()["error"]


def test_earth_engine_convention_and_b64(server):
    """Bands as base64 TensorProto strings keyed by band name, stacked into the model's one input."""
    _, base, _, _ = server
    rng = np.random.default_rng(1)
    bands = {f"B{i}": rng.normal(size=(6, 6, 1)).astype(np.float32) for i in range(3)}
    r = httpx.post(base + "/v1/models/lin:predict", headers=auth(),
                   json={"instances": [{k: tensor_to_b64(v) for k, v in bands.items()}]})
    assert r.status_code == 200, r.text
    from tilecast.payloads import b64_to_tensor

    got = b64_to_tensor(r.json()["predictions"][0])
    expect = bands["B0"] * 1 + bands["B1"] * 2 + bands["B2"] * 3 + 0.5
    assert np.allclose(got, expect, atol=1e-5)
    import base64

    from tilecast.payloads import serialize_tensor

    stacked = np.concatenate(list(bands.values()), axis=2)
    r = httpx.post(base + "/v1/projects/p/locations/l/endpoints/1:predict", headers=auth(),  # Vertex route
                   json={"instances": [{"b64": base64.b64encode(serialize_tensor(stacked)).decode()}]})
    assert r.status_code == 200, r.text


def test_tritonclient_talks_to_us(server):
    tc = pytest.importorskip("tritonclient.http")
    _, base, _, _ = server
    client = tc.InferenceServerClient(base.removeprefix("http://"))
    headers = auth()
    assert client.is_server_live() and client.is_model_ready("mc", headers=headers)
    meta = client.get_model_metadata("mc", headers=headers)
    assert meta["inputs"][0]["name"] == "image"
    x = np.random.default_rng(2).normal(size=(2, 3, 16, 16)).astype(np.float32)
    from tilecast.runtimes.onnx import OnnxRuntime

    d = Path(server[3]).parent
    expect = OnnxRuntime(d / "mc.onnx").run({"image": x})["mean"]
    for binary in (True, False):
        inp = tc.InferInput("image", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = tc.InferRequestedOutput("mean", binary_data=binary)
        result = client.infer("mc", [inp], outputs=[out], headers=auth())  # it adds to the dict: a fresh one
        assert np.allclose(result.as_numpy("mean"), expect, atol=1e-5)
    client.close()


def test_official_grpc_stub_talks_to_us(server):
    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tensorflow")
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    service = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    import tensorflow as tf

    _, _, target, _ = server
    x = np.random.default_rng(3).normal(size=(2, 5, 5, 3)).astype(np.float32)
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "lin"
    req.inputs["x"].CopyFrom(tf.make_tensor_proto(x))
    with grpc.insecure_channel(target) as channel:
        stub = service.PredictionServiceStub(channel)
        resp = stub.Predict(req, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
        y = tf.make_ndarray(resp.outputs["y"])
        assert np.allclose(y[..., 0], x @ np.float32([1, 2, 3]) + 0.5, atol=1e-5)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        meta_pb2 = pytest.importorskip("tensorflow_serving.apis.get_model_metadata_pb2")
        mreq = meta_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        mreq.model_spec.name = "lin"
        meta = stub.GetModelMetadata(mreq, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
        sdm = meta_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(sdm)
        x_info = sdm.signature_def["serving_default"].inputs["x"]
        assert [d.size for d in x_info.tensor_shape.dim] == [-1, -1, -1, 3] and x_info.dtype == 1
        bands = predict_pb2.PredictRequest()
        bands.model_spec.name = "lin"
        for i in range(3):
            bands.inputs[f"B{i}"].CopyFrom(tf.make_tensor_proto(x[..., i : i + 1]))
        with pytest.raises(grpc.RpcError) as info:  # a map has no order: bands are not stacked by guesswork
            stub.Predict(bands, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unordered" in info.value.details()
        req.model_spec.name = "nope"
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(req, timeout=30, metadata=[("authorization", f"Bearer {TOKEN}")])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_separate_bands_stacked_in_card_order(tmp_path):
    """gRPC inputs are a map: bands sent as separate tensors are stacked by name, in the card's band order (the same
    rule as HTTP), whatever order the map holds them in; common names work too."""
    import itertools

    grpc = pytest.importorskip("grpc")
    pytest.importorskip("tensorflow")
    predict_pb2 = pytest.importorskip("tensorflow_serving.apis.predict_pb2")
    service = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2_grpc")
    import tensorflow as tf

    from tilecast.card import build_card, write_card
    from tilecast.runtimes.onnx import OnnxRuntime
    from tilecast.spec import OutputBand

    path = linear_1x1(tmp_path / "rgb.onnx", [1.0, 10.0, 100.0], bias=0.5, layout="NHWC")
    card = build_card(name="rgb", bands=["B4", "B3", "B2"], input_tile_size=(8, 8), layout="NHWC",
                      input_names=["x"], common_names={"B4": "red", "B3": "green", "B2": "blue"},
                      output_bands=[OutputBand("y", np.dtype("float32"))], output_names=["y"])
    write_card(card, path, embed=False)
    x = np.random.default_rng(4).normal(size=(2, 8, 8, 3)).astype(np.float32)
    expect = OnnxRuntime(path).run({"x": x})["y"]
    sent = {"B4": x[..., 0:1], "B3": x[..., 1:2], "B2": x[..., 2:3]}
    common = {"red": x[..., 0:1], "green": x[..., 1:2], "blue": x[..., 2:3]}
    with tilecast_serve(path, "--batch-timeout-ms", "1", grpc=True, log=tmp_path / "log") as (_, base, target), \
            grpc.insecure_channel(target) as channel:
        stub = service.PredictionServiceStub(channel)
        for bands in [*(dict((k, sent[k]) for k in order) for order in itertools.permutations(sent)),
                      dict(reversed(common.items()))]:
            req = predict_pb2.PredictRequest()
            req.model_spec.name = "rgb"
            for k, v in bands.items():
                req.inputs[k].CopyFrom(tf.make_tensor_proto(v))
            resp = stub.Predict(req, timeout=30)
            np.testing.assert_allclose(tf.make_ndarray(resp.outputs["y"]), expect, rtol=1e-6)
        # HTTP goes through the same rule: the card's order wins over the order the JSON object lists
        r = httpx.post(base + "/v1/models/rgb:predict", json={"inputs": {k: sent[k].tolist() for k in ("B2", "B4",
                                                                                                       "B3")}})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.asarray(r.json()["outputs"], np.float32), expect, rtol=1e-5)
        req = predict_pb2.PredictRequest()
        req.model_spec.name = "rgb"
        for k in ("B4", "B3", "B8"):  # a band the card does not name: still no guessing
            req.inputs[k].CopyFrom(tf.make_tensor_proto(x[..., :1]))
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(req, timeout=30)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "['B4', 'B3', 'B2']" in info.value.details()


def test_concurrent_load_bounded_memory_and_metrics(server):
    psutil = pytest.importorskip("psutil")
    proc, base, _, _ = server
    rss = psutil.Process(proc.pid).memory_info().rss
    x = np.random.default_rng(4).normal(size=(1, 3, 32, 32)).astype(np.float32)
    body, headers = v2.encode_request({"image": x})
    headers = {**headers, **auth()}
    import asyncio

    async def burst() -> list[int]:  # 200 requests in flight at once
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits) as c:
            answers = await asyncio.gather(*(c.post(base + "/v2/models/mc/infer", content=body, headers=headers)
                                             for _ in range(200)))
        return [r.status_code for r in answers]

    results = asyncio.run(burst())
    assert results.count(200) == 200, {c: results.count(c) for c in set(results)}
    grown = psutil.Process(proc.pid).memory_info().rss - rss
    assert grown < 200 << 20, f"server RSS grew by {grown >> 20} MiB"
    text = httpx.get(base + "/metrics", headers=auth()).text
    assert 'tilecast_requests_total{code="200",model="mc",protocol="v2"}' in text
    count = float(text.split('tilecast_batch_instances_count{model="mc"} ')[1].split()[0])
    total = float(text.split('tilecast_batch_instances_sum{model="mc"} ')[1].split()[0])
    assert total >= 200 and count < total  # dynamic batching merged requests into fewer model calls


def test_structured_logs(server):
    log = server[3]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    requests = [e for e in lines if e["event"] == "request"]
    assert requests and {"status", "ms", "path", "protocol"} <= set(requests[-1])


def test_graceful_shutdown(tmp_path):
    mean_conv(tmp_path / "mc.onnx", bands=3)
    log = tmp_path / "s.log"
    x = np.zeros((1, 3, 64, 64), np.float32)
    body, headers = v2.encode_request({"image": x})
    with tilecast_serve(str(tmp_path / "mc.onnx"), "--max-batch", "64", "--batch-timeout-ms", "3000",
                        log=log) as (proc, base, _):
        codes: list[int] = []

        def call() -> None:
            codes.append(httpx.post(base + "/v2/models/mc/infer", content=body, headers=headers, timeout=30)
                         .status_code)

        started = threading.Event()

        def slow_call() -> None:  # a client still sending its body when the signal comes: in flight
            def chunks():
                for i in range(0, len(body), len(body) // 4):
                    if i:
                        started.set()
                    time.sleep(0.4)
                    yield body[i : i + len(body) // 4]

            codes.append(httpx.post(base + "/v2/models/mc/infer", content=chunks(),
                                    headers={**headers, "Content-Length": str(len(body))}, timeout=30).status_code)

        threads = [threading.Thread(target=call) for _ in range(4)] + [threading.Thread(target=slow_call)]
        for t in threads:
            t.start()
        assert started.wait(20), "the slow client never started sending"  # its first part is on the wire
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join()
        assert proc.wait(20) == 0
    assert codes == [200] * 5
    text = log.read_text()
    assert '"event": "stopped"' in text
    assert text.index('"Shutting down"') < text.rindex('"event": "request"')  # answered after the signal


@pytest.mark.parametrize("missing", ["starlette", "uvicorn"])
def test_core_only_install_names_the_server_extra(tmp_path, missing):
    """Without the ``server`` extra, ``tilecast serve`` ends in the error naming it, not ModuleNotFoundError."""
    mean_conv(tmp_path / "mc.onnx", bands=3)
    code = f"import sys; sys.modules[{missing!r}] = None; from tilecast.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "serve", str(tmp_path / "mc.onnx"), "--port", str(free_port())],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "pip install 'tilecast[server]'" in r.stderr and repr(missing) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and "ModuleNotFoundError" not in r.stderr, r.stderr


# -- models whose signature says little --------------------------------------------------------------------------
class Doubler:
    """Unknown rank and dtype, as TorchScript reports its tensors: ``y = 2 x``."""

    signature = Signature((TensorSpec("x", None, None),), (TensorSpec("y", None, None),))

    def run(self, batch):
        return {"y": np.asarray(batch["x"]) * 2}

    def close(self) -> None:
        pass


class Open:
    """No signature at all (a callable's): inputs go to the model under the names they were sent with."""

    signature = Signature((), ())

    def run(self, batch):
        return {"y": np.asarray(next(iter(batch.values()))) * 2}

    def close(self) -> None:
        pass


@contextlib.contextmanager
def built_server(models: dict) -> Iterator[tuple[str, str]]:
    """``build(models)`` under uvicorn in this process, on free loopback ports (HTTP and gRPC), stopped afterwards:
    yields the HTTP base URL and the gRPC target."""
    import uvicorn

    from tilecast.serve.server import build

    port, gport = free_port(), free_port()
    app = build(models, batch_timeout_ms=1, grpc_port=gport)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{gport}"
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.fixture(scope="module")
def little_signature_server():
    with built_server({"dbl": Doubler(), "open": Open()}) as addresses:
        yield addresses


def scalar_v2(name: str) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": [], "datatype": "FP32", "data": [1.0]}]}).encode()


@pytest.mark.parametrize(("route", "body"), [
    ("/v2/models/dbl/infer", scalar_v2("x")),
    ("/v2/models/open/infer", scalar_v2("x")),
    ("/v1/models/dbl:predict", b'{"inputs": 5}'),
    ("/v1/models/open:predict", b'{"inputs": {"x": 5}}'),
])
def test_a_scalar_input_is_400_not_500(little_signature_server, route, body):
    """A model whose signature says little (TorchScript's unknown rank, a callable's none), hosted in this process
    (uvicorn on a free loopback port, stopped afterwards): a 0-d tensor has no batch axis; ``len()`` of it was a
    TypeError, answered 500."""
    base, _ = little_signature_server
    r = httpx.post(base + route, content=body, timeout=30)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert "first axis" in r.json()["error"]


def test_a_scalar_input_over_grpc_is_invalid_argument(little_signature_server):
    grpc = pytest.importorskip("grpc")
    from tilecast.payloads.protos import PredictRequest, PredictResponse, make_tensor_proto

    _, target = little_signature_server
    req = PredictRequest()
    req.model_spec.name = "dbl"
    req.inputs["x"].CopyFrom(make_tensor_proto(np.float32(1)))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=PredictResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            call(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "first axis" in info.value.details()


def test_little_signature_models_still_answer_batches(little_signature_server):
    base, _ = little_signature_server
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    body, headers = v2.encode_request({"x": x})
    r = httpx.post(base + "/v2/models/dbl/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text[:300]
    assert np.array_equal(v2.decode_response(r.content, int(r.headers[v2.HEADER_LENGTH]), 2)["y"], x * 2)
