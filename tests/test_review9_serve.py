"""Review 9 of ``tilecast serve`` and the payload codecs, against a real server on 127.0.0.1.

NaN and infinities: JSON (RFC 8259) has no token for them. TF Serving's REST API and Triton write bare ``NaN`` /
``Infinity``, which strict parsers (KServe's Python server, Vertex AI's front end, Go, orjson) refuse, so tilecast
writes no such body: the client refuses before sending, naming the input, the instance and the fix (a binary
format, or a nodata value so the pixels are masked), and the server answers 400 naming the output and the format
that carries it. Binary formats carry NaN exactly, both ways.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from onnx_models import linear_1x1  # noqa: E402
from test_server import free_port, tilecast_serve  # noqa: E402
from tilecast.errors import InputError  # noqa: E402
from tilecast.payloads import tensor_to_b64, v2  # noqa: E402
from tilecast.payloads.tensors import b64_to_tensor  # noqa: E402
from tilecast.runtimes.http import endpoint_runtime  # noqa: E402

BIG = np.float32(3e38)
"""Finite in float32; times 10 (the model) it is +Infinity."""


def strict_json(data: bytes):
    """``json.loads`` as a strict (RFC 8259) parser: bare NaN / Infinity tokens are an error."""
    def refuse(token: str):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(data, parse_constant=refuse)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    d = tmp_path_factory.mktemp("review9")
    linear_1x1(d / "lin.onnx", [10.0])  # y = 10 x, (N, 1, H, W)
    with tilecast_serve(str(d / "lin.onnx"), "--max-batch", "1", log=d / "server.log") as (proc, base, _):
        yield proc, base


def batch_with(value: float) -> np.ndarray:
    x = np.arange(2 * 1 * 3 * 4, dtype=np.float32).reshape(2, 1, 3, 4)
    x[1, 0, 2, 1] = value
    return x


@pytest.mark.parametrize(("route", "fmt", "fix"), [
    ("/v1/models/lin:predict", "RAW_JSON", "SERIALIZED_TF_TENSORS"),
    ("/v1/models/lin:predict", "ND_ARRAYS", "SERIALIZED_TF_TENSORS"),
    ("/v1/models/lin:predict", "COLUMNAR_JSON", "SERIALIZED_TF_TENSORS"),
    ("/v2/models/lin", "V2_JSON", "V2_BINARY"),
])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_client_refuses_nan_in_json_before_sending(served, route, fmt, fix, bad):
    _, base = served
    with contextlib.closing(endpoint_runtime(base + route, payload_format=fmt)) as rt:
        good = rt.run({"x": batch_with(5.0)})  # the same request with a finite value goes through
        assert np.array_equal(next(iter(good.values())), batch_with(5.0) * 10)
        # an InputError, not the EndpointError a server's 400 would be: refused here, before sending
        with pytest.raises(InputError) as info:
            rt.run({"x": batch_with(bad)})
    msg = str(info.value)
    assert "'x'" in msg and "instance 1 at [0, 2, 1]" in msg and fix in msg and "nodata" in msg, msg


@pytest.mark.parametrize(("route", "fmt"), [("/v2/models/lin", "V2_BINARY"),
                                            ("/v1/models/lin:predict", "SERIALIZED_TF_TENSORS")])
def test_binary_formats_carry_nan_and_infinity_both_ways(served, route, fmt):
    _, base = served
    x = batch_with(np.nan)
    x[0, 0, 0, 0], x[0, 0, 0, 1] = -np.inf, BIG  # -inf in, and a finite value that overflows to +inf out
    with contextlib.closing(endpoint_runtime(base + route, payload_format=fmt)) as rt:
        y = next(iter(rt.run({"x": x}).values()))
    with np.errstate(over="ignore"):
        expected = x * np.float32(10)
    assert np.isposinf(y[0, 0, 0, 1]) and np.isneginf(y[0, 0, 0, 0]) and np.isnan(y[1, 0, 2, 1])
    np.testing.assert_array_equal(y, expected)


def test_server_answers_strict_json_for_v2(served):
    _, base = served
    x = np.full((1, 1, 1, 2), 1.5, np.float32)
    x[0, 0, 0, 1] = BIG
    head = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = httpx.post(base + "/v2/models/lin/infer", json=head, timeout=30)
    assert r.status_code == 400, r.text
    error = strict_json(r.content)["error"]
    assert "'y'" in error and "binary_data_output" in error and "instance 0 at [0, 0, 1]" in error, error
    # asked for binary outputs, the same request is answered, the infinity intact
    body, headers = v2.encode_request({"x": x}, binary=True)
    r = httpx.post(base + "/v2/models/lin/infer", content=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    out = v2.decode_response(r.content, int(r.headers[v2.HEADER_LENGTH]), 1)["y"]
    assert out[0, 0, 0, 0] == 15.0 and np.isposinf(out[0, 0, 0, 1])


@pytest.mark.parametrize("body", [
    {"instances": [{"x": [[[1.5, 3e38]]]}]},  # RAW_JSON
    {"instances": [[[[1.5, 3e38]]]]},  # ND_ARRAYS
    {"inputs": {"x": [[[[1.5, 3e38]]]]}},  # COLUMNAR_JSON
])
def test_server_answers_strict_json_for_tf_serving_rest(served, body):
    _, base = served
    r = httpx.post(base + "/v1/models/lin:predict", json=body, timeout=30)
    assert r.status_code == 400, r.text
    error = strict_json(r.content)["error"]
    assert "'y'" in error and "SERIALIZED_TF_TENSORS" in error and "1 NaN or infinite" in error, error
    # the same values as base64 TensorProtos (Earth Engine's default): answered, the infinity intact
    x = np.array([[[1.5, 3e38]]], np.float32)
    r = httpx.post(base + "/v1/models/lin:predict", json={"instances": [{"x": tensor_to_b64(x)}]}, timeout=30)
    assert r.status_code == 200, r.text
    y = b64_to_tensor(strict_json(r.content)["predictions"][0])
    assert y[0, 0, 0] == 15.0 and np.isposinf(y[0, 0, 1])


def test_server_refuses_nan_tokens_in_requests_naming_the_fix(served):
    _, base = served
    r = httpx.post(base + "/v1/models/lin:predict", content=b'{"instances": [{"x": [[[1.0, NaN]]]}]}',
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "finite" in r.json()["error"] and "SERIALIZED_TF_TENSORS" in r.json()["error"]
    head = {"inputs": [{"name": "x", "shape": [1, 1, 1, 2], "datatype": "FP32", "data": [1.0, float("inf")]}]}
    r = httpx.post(base + "/v2/models/lin/infer", content=json.dumps(head).encode(), timeout=30)
    assert r.status_code == 400 and "V2_BINARY" in r.json()["error"]


def run_serve(*args: str, timeout: float = 60.0) -> tuple[int | None, str]:
    """``tilecast serve ARGS`` expected to fail at once: (exit status, stderr); None when it started serving."""
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        return None, err.decode()
    return proc.returncode, err.decode()


@pytest.fixture(scope="module")
def lin(tmp_path_factory):
    return linear_1x1(tmp_path_factory.mktemp("ports") / "lin.onnx", [1.0])


@pytest.mark.parametrize("flag", ["--port", "--grpc-port"])
def test_a_port_in_use_is_one_clear_line_before_the_models_load(lin, flag):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        args = [lin, "--port", str(busy)] if flag == "--port" else [lin, "--port", str(free_port()), flag, str(busy)]
        rc, err = run_serve(*args, timeout=20)
    assert rc == 1 and "Traceback" not in err, err
    assert f"{flag} {busy}: cannot listen on 127.0.0.1:{busy}" in err and "another process" in err, err


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),  # it listened on another port (70000 - 65536)
    (["--port", "-1"], "-1 is not in the range"),
    (["--grpc-port", "8500"], "--grpc-port 8500 is the HTTP --port too"),
    (["--threads", "0"], "--threads 0: give a positive number"),
    (["--threads", "-2"], "--threads -2: give a positive number"),
    (["--graceful-timeout", "-1"], "--graceful-timeout not negative"),
    (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address"),
    (["--host", "192.0.2.1"], "is --host an address of this machine?"),  # TEST-NET-1: never a local address
])
def test_serve_refuses_bad_flags_without_starting(lin, args, message):
    if "--port" not in args:
        args = [*args, "--port", "8500"] if "--grpc-port" in args else [*args, "--port", str(free_port())]
    rc, err = run_serve(lin, *args, timeout=30)
    assert rc in (1, 2) and "Traceback" not in err and message in err, (rc, err)


@pytest.mark.parametrize("name", ["a/b", "a:b", "", "..", "x?y"])
def test_a_model_name_no_route_can_reach_is_refused(lin, name):
    rc, err = run_serve(f"{name}={lin}", "--port", str(free_port()), timeout=30)
    assert rc == 1 and f"model name {name!r}" in err and "Traceback" not in err, (rc, err)
    rc, err = run_serve(lin, "--name", name, "--port", str(free_port()), timeout=30)
    assert rc == 1 and f"model name {name!r}" in err, (rc, err)


@pytest.mark.parametrize("head", [
    {"parameters": {"binary_data_output": "false"}},  # a string: was taken as true, and the answer came binary
    {"parameters": {"binary_data_output": 0}},
    {"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]},
])
def test_v2_binary_flags_must_be_booleans(served, head):
    _, base = served
    body = {"inputs": [{"name": "x", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [1.0]}], **head}
    r = httpx.post(base + "/v2/models/lin/infer", json=body, timeout=30)
    assert r.status_code == 400 and "must be true or false" in r.json()["error"], r.text
    ok = {**body, "parameters": {"binary_data_output": False}, "outputs": [{"name": "y"}]}
    r = httpx.post(base + "/v2/models/lin/infer", json=ok, timeout=30)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [10.0], r.text


def test_predict_through_raw_json_names_the_nan_and_the_nodata_fix_works(served, tmp_path):
    """A float raster with NaN pixels and no nodata: predicting over RAW_JSON fails before sending, naming the fix;
    with nodata=NaN the pixels are masked and sent as the fill value, and the result equals the local run."""
    import tilecast
    from conftest import write_raster

    _, base = served
    data = (np.arange(40 * 36, dtype=np.float32).reshape(40, 36) / 7).astype(np.float32)
    data[17, 5] = np.nan
    params = dict(input_tile_size=16, input_overlap_size=0, batch_size=4)
    bare = write_raster(tmp_path / "bare.tif", data)
    masked = write_raster(tmp_path / "masked.tif", data, nodata=float("nan"))
    model = tilecast.Model.from_endpoint(base + "/v1/models/lin:predict", payload_format="RAW_JSON", **params)
    try:
        with pytest.raises(InputError, match=r"NaN or infinite.*SERIALIZED_TF_TENSORS.*nodata"):
            model.predict_image(bare).to_numpy()
        remote = model.predict_image(masked).to_numpy()
    finally:
        model.close()
    local = tilecast.Model.from_onnx(linear_1x1(tmp_path / "lin.onnx", [10.0]), **params)
    expected = local.predict_image(masked).to_numpy()
    assert np.isnan(remote[0, 17, 5]) and np.isfinite(remote).sum() == remote.size - 1
    np.testing.assert_array_equal(remote, expected)
    np.testing.assert_allclose(remote[0, 16, 4], data[16, 4] * 10, rtol=1e-6)


@pytest.mark.parametrize("value", ['{"b64": "!!!"}', '{"b64": ""}', '"!!!"', '""'])
def test_base64_that_decodes_to_nothing_says_so(served, value):
    _, base = served
    r = httpx.post(base + "/v1/models/lin:predict", content=f'{{"instances": [{{"x": {value}}}]}}'.encode(),
                   headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "decodes to no bytes" in r.json()["error"], r.text  # was "TensorProto dtype 0"


@pytest.mark.parametrize(("signum", "times"), [(signal.SIGTERM, 1), (signal.SIGINT, 1), (signal.SIGINT, 2)])
def test_shutdown_answers_a_request_still_in_flight_with_503_and_logs_no_traceback(lin, tmp_path, signum, times):
    """A request whose body is still arriving when --graceful-timeout runs out (or a second Ctrl-C forces the exit)
    gets 503 with Retry-After, not uvicorn's bare 500; the log holds no traceback and the exit status is 0."""
    log = tmp_path / "server.log"
    with tilecast_serve(lin, "--graceful-timeout", "1", log=log) as (proc, base, _):
        port = int(base.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /v2/models/lin/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inp")
            time.sleep(0.5)
            for _ in range(times):
                proc.send_signal(signum)
                time.sleep(0.5)
            answer = b""
            while chunk := s.recv(4096):  # the head and the body may come in separate reads
                answer += chunk
            answer = answer.decode()
            assert proc.wait(30) == 0
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503") and "retry-after: 1" in head.lower(), answer
    assert "shutting down" in json.loads(body)["error"]
    text = log.read_text()
    assert "Traceback" not in text and '"stopped"' in text, text[-3000:]


@pytest.mark.parametrize("token", ["s3cret\n", " s3cret", "s3cr\u00e9t"])
def test_a_token_no_client_can_send_is_refused_at_start(lin, token):
    """HTTP headers cannot carry a line break or non-ASCII, and the server strips what it receives: such a token
    used to start a server that answered every request 403."""
    cmd = [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", lin, "--port", str(free_port()),
           "--token-env", "TILECAST_REVIEW9_TOKEN"]
    env = {**os.environ, "TILECAST_REVIEW9_TOKEN": token}
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("the server started with a token no client can send")
    assert res.returncode == 1 and "TILECAST_REVIEW9_TOKEN: the token has" in res.stderr, res.stderr
