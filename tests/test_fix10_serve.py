"""Review 10 of ``tilecast serve``: Vertex AI's custom-container contract ($AIP_HTTP_PORT, $AIP_HEALTH_ROUTE,
$AIP_PREDICT_ROUTE), TF Serving's ``signature_name``, and one shutdown grace for HTTP and gRPC.

Servers run on 127.0.0.1 on free ports and are stopped afterwards; Vertex's variables are set with monkeypatch, as
Vertex sets them when it starts a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.server
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from onnx_models import linear_1x1  # noqa: E402
from test_server import built_server, free_port, stop  # noqa: E402
from tilecast.errors import InputError, SpecError  # noqa: E402
from tilecast.runtimes.base import Signature, TensorSpec  # noqa: E402
from tilecast.serve.app import vertex_routes  # noqa: E402
from tilecast.serve.protocol import overload_app  # noqa: E402
from tilecast.serve.server import DEFAULT_PORT, listen_address  # noqa: E402

ENDPOINT_ROUTE = "/v1/endpoints/123/deployedModels/456"
"""Vertex AI's own form of the routes: health on this path, predictions on it plus ``:predict``."""


@pytest.fixture(scope="module")
def lin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fix10") / "lin.onnx"
    linear_1x1(path, [1.0, 2.0, -1.0], bias=0.5)  # y = x0 + 2 x1 - x2 + 0.5, (N, 3, H, W)
    return path


def expected(x: np.ndarray) -> np.ndarray:
    return x[:, :1] + 2 * x[:, 1:2] - x[:, 2:3] + 0.5  # (N, 1, H, W)


@contextlib.contextmanager
def serving(*args: str, port: int, probe: str = "/v2/health/ready", log: Path | None = None, timeout: float = 60,
            host: str = "127.0.0.1"):
    """``tilecast serve ARGS`` (the environment of this process, Vertex's variables included), until it answers
    ``probe`` on ``host``:``port``; yields (process, base URL) and stops it afterwards."""
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", *args]
    err = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"tilecast serve exited with {proc.returncode}: "
                                   f"{log.read_text()[-2000:] if log else ''}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + probe, timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "tilecast serve did not become ready"
            time.sleep(0.1)
        yield proc, base
    finally:
        stop(proc)
        if log:
            err.close()  # type: ignore[union-attr]


# -- Vertex AI's custom-container contract ---------------------------------------------------------------------------
@pytest.mark.parametrize("health", [ENDPOINT_ROUTE, ENDPOINT_ROUTE + ":predict"], ids=["own-path", "same-path"])
def test_vertex_port_and_routes_from_the_environment(lin, monkeypatch, health):
    """No --port: the server listens on $AIP_HTTP_PORT, answers health checks on $AIP_HEALTH_ROUTE and Vertex's
    {"instances"} -> {"predictions"} on $AIP_PREDICT_ROUTE, beside its own routes. Vertex's API reference gives the
    predict path as the health route's default, so the two may be one path: GET is health, POST predicts."""
    port = free_port()
    monkeypatch.setenv("AIP_HTTP_PORT", str(port))
    monkeypatch.setenv("AIP_HEALTH_ROUTE", health)
    monkeypatch.setenv("AIP_PREDICT_ROUTE", ENDPOINT_ROUTE + ":predict")
    # --host 127.0.0.1: tests listen on loopback only (in a container the default is 0.0.0.0, tested below)
    with serving(str(lin), "--host", "127.0.0.1", "--max-batch", "1", port=port, probe=health) as (_, base):
        r = httpx.get(base + health, timeout=5)
        assert r.status_code == 200 and r.json() == {"ready": True}
        x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
        r = httpx.post(base + ENDPOINT_ROUTE + ":predict", json={"instances": x.tolist(), "parameters": {}},
                       timeout=30)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.asarray(r.json()["predictions"], np.float32), expected(x), rtol=1e-6)
        # the server's own routes still answer on the same port
        r = httpx.post(base + "/v1/models/lin:predict", json={"instances": x.tolist()}, timeout=30)
        np.testing.assert_allclose(np.asarray(r.json()["predictions"], np.float32), expected(x), rtol=1e-6)
        assert httpx.get(base + "/v2/health/ready", timeout=5).status_code == 200


def test_explicit_port_wins_over_aip_http_port(lin, monkeypatch):
    vertex_port, port = free_port(), free_port()
    monkeypatch.setenv("AIP_HTTP_PORT", str(vertex_port))
    with serving(str(lin), "--host", "127.0.0.1", "--port", str(port), port=port), \
            pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{vertex_port}/v2/health/ready", timeout=2)


def test_listen_address(monkeypatch):
    monkeypatch.delenv("AIP_HTTP_PORT", raising=False)
    assert listen_address() == ("127.0.0.1", DEFAULT_PORT)  # local clients only, outside a container
    monkeypatch.setenv("AIP_HTTP_PORT", "8080")
    assert listen_address() == ("0.0.0.0", 8080)  # Vertex probes and predicts from outside the container
    assert listen_address("127.0.0.1", None) == ("127.0.0.1", 8080)
    assert listen_address(None, 9000) == ("0.0.0.0", 9000)
    assert listen_address("::1", 0) == ("::1", 0)
    for bad in ("http", "8080.0", "70000", "-1", "²"):
        monkeypatch.setenv("AIP_HTTP_PORT", bad)
        with pytest.raises(SpecError, match=r"\$AIP_HTTP_PORT .*--port"):
            listen_address()
        assert listen_address(None, 9000)[1] == 9000  # --port wins over a bad value


@pytest.mark.parametrize(("var", "value"), [("AIP_PREDICT_ROUTE", "predict"), ("AIP_HEALTH_ROUTE", "/health {x}"),
                                            ("AIP_HTTP_PORT", "eighty")])
def test_bad_vertex_variables_fail_at_start_in_one_line(lin, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    r = subprocess.run([sys.executable, "-c", "from tilecast.cli import main; main()", "serve", str(lin),
                        "--host", "127.0.0.1", *(["--port", str(free_port())] if var != "AIP_HTTP_PORT" else [])],
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode != 0
    assert f"${var}" in r.stderr and "Traceback" not in r.stderr and "AssertionError" not in r.stderr, r.stderr


def test_vertex_routes(monkeypatch):
    monkeypatch.delenv("AIP_PREDICT_ROUTE", raising=False)
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "")
    assert vertex_routes() == (None, None)
    monkeypatch.setenv("AIP_PREDICT_ROUTE", " /predict ")
    monkeypatch.setenv("AIP_HEALTH_ROUTE", "/health")
    assert vertex_routes() == ("/predict", "/health")


def test_overloaded_server_answers_health_checks_but_not_predictions_on_the_same_path():
    """Health checks pass the connection caps; a prediction POSTed to the same path (Vertex's routes may be one
    path) gets the 503 every other request gets, instead of bypassing the caps."""
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["method"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    guarded = overload_app(app, frozenset({ENDPOINT_ROUTE}), "busy")

    def status(method: str, path: str) -> int:
        sent: list[dict] = []

        async def send(message):
            sent.append(message)

        asyncio.run(guarded({"type": "http", "method": method, "path": path}, None, send))
        return sent[0]["status"]

    assert status("GET", ENDPOINT_ROUTE) == 200 and status("HEAD", ENDPOINT_ROUTE) == 200
    assert status("POST", ENDPOINT_ROUTE) == 503 and status("GET", "/v1/models/lin") == 503
    assert seen == ["GET", "HEAD"]


# -- TF Serving's signature_name -------------------------------------------------------------------------------------
class Plus:
    """y = x + 1, a model that names no signature (an ONNX model's)."""

    signature = Signature((TensorSpec("x", (None, 3), np.dtype("float32")),),
                          (TensorSpec("y", (None, 3), np.dtype("float32")),))

    def run(self, batch):
        return {"y": np.asarray(batch["x"]) + 1}

    def close(self) -> None:
        pass


class PlusNamed(Plus):
    """The same, run through a signature of its own name (a SavedModel exported with only a ``predict`` one)."""

    signature_name = "predict"


@pytest.fixture(scope="module")
def signature_server():
    with built_server({"plus": Plus(), "named": PlusNamed()}) as addresses:
        yield addresses


X = np.arange(6, dtype=np.float32).reshape(2, 3)


@pytest.mark.parametrize(("model", "given"), [
    ("plus", None), ("plus", ""), ("plus", "serving_default"),
    ("named", None), ("named", "serving_default"), ("named", "predict"),
])
@pytest.mark.parametrize("form", ["instances", "inputs"])
def test_signature_name_the_model_is_served_with_is_answered(signature_server, model, given, form):
    base, _ = signature_server
    body = {form: X.tolist(), **({} if given is None else {"signature_name": given})}
    r = httpx.post(f"{base}/v1/models/{model}:predict", json=body, timeout=30)
    assert r.status_code == 200, r.text
    got = r.json()["predictions" if form == "instances" else "outputs"]
    np.testing.assert_array_equal(np.asarray(got, np.float32), X + 1)


@pytest.mark.parametrize(("model", "given", "served"), [
    ("plus", "predict", ["'serving_default'"]),
    ("plus", "serving_defualt", ["'serving_default'"]),
    ("named", "classify", ["'serving_default'", "'predict'"]),
])
def test_signature_name_the_model_lacks_is_400_naming_the_served_ones(signature_server, model, given, served):
    """TF Serving answers such a request with an error (``{"error": ...}``), not with another signature's outputs."""
    base, _ = signature_server
    for route in (f"/v1/models/{model}:predict", f"/v1/projects/p/models/{model}:predict"):
        r = httpx.post(base + route, json={"instances": X.tolist(), "signature_name": given}, timeout=30)
        assert r.status_code == 400, r.text
        msg = r.json()["error"]
        assert repr(given) in msg and all(s in msg for s in served), msg
    r = httpx.post(f"{base}/v1/models/{model}:predict", json={"instances": X.tolist(), "signature_name": 7},
                   timeout=30)
    assert r.status_code == 400 and "signature_name" in r.json()["error"], r.text


@pytest.mark.parametrize(("model", "given", "ok"), [("plus", "", True), ("plus", "serving_default", True),
                                                    ("named", "predict", True), ("plus", "predict", False)])
def test_signature_name_over_grpc(signature_server, model, given, ok):
    grpc = pytest.importorskip("grpc")
    from tilecast.payloads.protos import PredictRequest, PredictResponse, make_ndarray, make_tensor_proto

    _, target = signature_server
    req = PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = given
    req.inputs["x"].CopyFrom(make_tensor_proto(X))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=PredictResponse.FromString)
        if ok:
            np.testing.assert_array_equal(make_ndarray(call(req, timeout=30).outputs["y"]), X + 1)
            return
        with pytest.raises(grpc.RpcError) as info:
            call(req, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'predict'" in info.value.details() and "'serving_default'" in info.value.details()


# -- one shutdown grace for HTTP and gRPC ----------------------------------------------------------------------------
SLOW_SERVER = """
import sys, time
import numpy as np
from tilecast.runtimes.base import Signature, TensorSpec
from tilecast.serve.server import serve

class Slow:
    signature = Signature((TensorSpec("x", (None, 3), np.dtype("float32")),),
                          (TensorSpec("y", (None, 3), np.dtype("float32")),))

    def run(self, batch):
        time.sleep(0.5)
        return {"y": np.asarray(batch["x"]) + 1}

    def close(self):
        pass

serve({"slow": Slow()}, host="127.0.0.1", port=int(sys.argv[1]), grpc_port=int(sys.argv[2]), max_batch=1,
      graceful_s=float(sys.argv[3]))
"""
"""A server of a model that takes 0.5 s per call, one call at a time: gRPC calls queue behind it."""


def json_lines(text: str) -> list[dict]:
    """The JSON log lines of ``text`` (a traceback's lines are not)."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict):
                out.append(entry)
    return out


def stop_slow_server(tmp_path: Path, grace: float, signals: list[tuple[float, signal.Signals]], calls: int = 16
                     ) -> tuple[float, list, str]:
    """Start :data:`SLOW_SERVER` with ``--graceful-timeout grace``, send it ``calls`` gRPC calls at once, then each
    signal after its pause; returns the seconds from the first signal to the exit, each call's status (checking
    the answers of those that succeed), and the log."""
    grpc = pytest.importorskip("grpc")
    from tilecast.payloads.protos import PredictRequest, PredictResponse, make_ndarray, make_tensor_proto

    port, gport = free_port(), free_port()
    script = tmp_path / "slow_server.py"
    script.write_text(SLOW_SERVER)
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(port), str(gport), str(grace)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        req = PredictRequest()
        req.model_spec.name = "slow"
        req.inputs["x"].CopyFrom(make_tensor_proto(X))
        with grpc.insecure_channel(f"127.0.0.1:{gport}") as channel:
            call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                       request_serializer=lambda m: m.SerializeToString(),
                                       response_deserializer=PredictResponse.FromString)
            futures = [call.future(req, timeout=60) for _ in range(calls)]
            t0 = None
            for pause, signum in signals:
                time.sleep(pause)
                t0 = t0 or time.monotonic()
                proc.send_signal(signum)
            # uvicorn re-raises the signal it caught once it has stopped
            assert proc.wait(60) in (0, -signal.SIGTERM, -signal.SIGINT)
            stopped_s = time.monotonic() - t0
            codes = []
            for f in futures:
                try:
                    np.testing.assert_array_equal(make_ndarray(f.result().outputs["y"]), X + 1)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as exc:
                    codes.append(exc.code())
            with pytest.raises(grpc.RpcError):  # stopped: no new calls
                call(req, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert '"event": "stopped"' in text, text[-2000:]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED}, codes
    # calls cut short are logged (and counted in the metrics) as HTTP's are: 503, not a 500 of the server's own
    logged = [e["status"] for e in json_lines(text) if e.get("protocol") == "grpc"]
    assert set(logged) <= {200, 503} and len(logged) == calls, logged
    return stopped_s, [c.name for c in codes], text


@pytest.mark.parametrize("grace", [0.0, 1.0])
def test_grpc_drains_within_the_graceful_timeout(tmp_path, grace):
    """SIGTERM with gRPC calls queued behind a slow model: gRPC stops taking calls at the signal and drains within
    the same --graceful-timeout as HTTP, beside it (calls still waiting then are cancelled: UNAVAILABLE, which
    clients retry), instead of a fixed 10 s of its own after HTTP's. Before, all 16 calls (8 s) ran to the end."""
    stopped_s, codes, text = stop_slow_server(tmp_path, grace, [(1.0, signal.SIGTERM)])
    # the grace, the model call then running (0.5 s) and the closing, with room for a busy machine
    assert stopped_s < grace + 3.5, (stopped_s, codes, text[-2000:])
    assert codes.count("OK") < 16 - 2 * (grace + 1), codes


def test_second_ctrl_c_stops_grpc_at_once(tmp_path):
    """A second Ctrl-C ends the wait for gRPC calls too, as it does for HTTP's; before, the gRPC drain went on for
    all 40 queued calls (20 s) whatever the user pressed."""
    stopped_s, codes, text = stop_slow_server(tmp_path, 30.0, [(1.0, signal.SIGINT), (1.0, signal.SIGINT)], calls=40)
    assert stopped_s < 1.0 + 3.5, (stopped_s, codes, text[-2000:])
    assert codes.count("OK") < 12, codes


# -- gRPC's address ----------------------------------------------------------------------------------------------------
def grpc_predict(target: str, x: np.ndarray) -> np.ndarray:
    grpc = pytest.importorskip("grpc")
    from tilecast.payloads.protos import PredictRequest, PredictResponse, make_ndarray, make_tensor_proto

    req = PredictRequest()
    req.model_spec.name = "lin"
    req.inputs["x"].CopyFrom(make_tensor_proto(x))
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=PredictResponse.FromString)
        return make_ndarray(call(req, timeout=30).outputs["y"])


def listening(log: Path, key: str) -> str:
    for entry in json_lines(log.read_text()):
        if entry.get("event") == "listening" and key in entry:
            return entry[key]
    raise AssertionError(f"no 'listening' line with {key!r}: {log.read_text()[-2000:]}")


def test_grpc_port_0_logs_the_port_it_listens_on(lin, tmp_path):
    """--grpc-port 0 (any free port) logged "127.0.0.1:0", so no client could find the server."""
    pytest.importorskip("grpc")
    port, log = free_port(), tmp_path / "serve.log"
    with serving(str(lin), "--port", str(port), "--grpc-port", "0", port=port, log=log):
        target = listening(log, "grpc")
        assert target.startswith("127.0.0.1:") and not target.endswith(":0"), target
        x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
        np.testing.assert_allclose(grpc_predict(target, x), expected(x), rtol=1e-6)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
def test_grpc_on_an_ipv6_host(lin, tmp_path):
    """--host ::1 with --grpc-port: gRPC was handed "::1:PORT" ("Misformatted domain name") and the server exited
    with a traceback; the log's URL was http://::1:PORT."""
    pytest.importorskip("grpc")
    port, gport, log = free_port(), free_port(), tmp_path / "serve.log"
    with serving(str(lin), "--host", "::1", "--port", str(port), "--grpc-port", str(gport), port=port, log=log,
                 host="[::1]") as (_, base):
        assert listening(log, "http") == f"http://[::1]:{port}"
        assert listening(log, "grpc") == f"[::1]:{gport}"
        x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
        np.testing.assert_allclose(grpc_predict(f"[::1]:{gport}", x), expected(x), rtol=1e-6)
        r = httpx.post(base + "/v1/models/lin:predict", json={"instances": x.tolist()}, timeout=30)
        np.testing.assert_allclose(np.asarray(r.json()["predictions"], np.float32), expected(x), rtol=1e-6)


@pytest.mark.parametrize("option", ["--graceful-timeout", "--header-timeout", "--keep-alive-timeout",
                                    "--batch-timeout-ms"])
def test_nan_durations_are_refused_at_start(lin, option):
    """NaN passed every "not negative" check: --graceful-timeout nan ended each shutdown in a ValueError traceback,
    --header-timeout nan failed every connection."""
    r = subprocess.run([sys.executable, "-c", "from tilecast.cli import main; main()", "serve", str(lin),
                        "--port", str(free_port()), option, "nan"], capture_output=True, text=True, timeout=60)
    assert r.returncode in (1, 2) and option in r.stderr and "Traceback" not in r.stderr, r.stderr


SAVED_MODEL = """
import tensorflow as tf

class M(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def predict(self, x):
        return {"y": x + 1}

m = M()
tf.saved_model.save(m, %r, signatures={"predict": m.predict})
"""


def test_a_savedmodel_is_served_under_its_own_signature_name(tmp_path):
    """A SavedModel exported with a ``predict`` signature only: requests naming ``predict`` or the default are
    answered, any other name is refused naming both."""
    pytest.importorskip("tensorflow")
    from tilecast.serve.models import NamedSignature, ServedModel, load_runtime

    path = tmp_path / "sm"
    subprocess.run([sys.executable, "-c", SAVED_MODEL % str(path)], check=True, capture_output=True, timeout=300)
    rt = load_runtime(path)
    try:
        assert isinstance(rt, NamedSignature)
        m = ServedModel("sm", rt)
        assert m.signature_names == ("serving_default", "predict")
        m.check_signature("predict")
        m.check_signature("serving_default")
        with pytest.raises(InputError, match=r"'classify'.*'serving_default', 'predict'"):
            m.check_signature("classify")
    finally:
        rt.close()


@pytest.mark.parametrize("option", [("--max-body-bytes", "3000000000"), ("--keep-alive-timeout", "inf"),
                                    ("--keep-alive-timeout", "3000000")])
def test_limits_past_grpc_32_bit_options(lin, option):
    """gRPC's channel options are 32-bit: --max-body-bytes 3000000000 or --keep-alive-timeout inf with --grpc-port
    ended the start in an OverflowError traceback (exit 3). gRPC now takes them up to its own ceiling."""
    pytest.importorskip("grpc")
    port, gport = free_port(), free_port()
    with serving(str(lin), "--port", str(port), "--grpc-port", str(gport), *option, port=port):
        x = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
        np.testing.assert_allclose(grpc_predict(f"127.0.0.1:{gport}", x), expected(x), rtol=1e-6)
