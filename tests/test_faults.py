"""A scripted misbehaving endpoint on loopback: retries work, errors are clear, nothing is half-written."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("httpx")

import tilecast
from conftest import coord_image, write_raster
from tilecast.errors import EndpointError, OutputShapeError
from tilecast.payloads import rest
from tilecast.remote import RetryPolicy
from tilecast.runtimes.http import endpoint_runtime

PARAMS = dict(input_tile_size=16, output_bands={"output": {"type": "float32"}}, batch_size=4)
FAST = RetryPolicy(retries=3, base=0.01, cap=0.05)


class Scripted(ThreadingHTTPServer):
    """Answers POSTs with ``B1 + B2`` in the request's format, unless the next scripted action says otherwise."""

    daemon_threads = True

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = list(script)
        self.lock = threading.Lock()
        self.posts = 0
        self.auth: list[str | None] = []

    def action(self) -> str:
        with self.lock:
            self.posts += 1
            return self.script.pop(0) if self.script else "ok"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/models/m:predict"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # no metadata: an open signature
        self.send(404, b'{"error": "no metadata here"}')

    def send(self, status: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        server: Scripted = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers["Content-Length"]))
        server.auth.append(self.headers.get("Authorization"))
        act = server.action()
        kind, _, arg = act.partition(":")
        if kind == "drop":
            self.close_connection = True
            return
        if kind == "sleep":
            time.sleep(float(arg))
        if kind in ("429", "503", "500"):
            headers = {"Retry-After": arg} if arg else {}
            return self.send(int(kind), json.dumps({"error": f"scripted {kind}"}).encode(), headers)
        arrays, fmt = rest.decode_request(json.loads(body))
        out = arrays["B1"] + arrays["B2"]
        if kind == "wrong_shape":
            out = out[:, :-1]
        answer = rest.encode_response(fmt, {"output": out})
        if kind == "wrong_count":
            answer["predictions"] = answer["predictions"][:-1]
        data = json.dumps(answer).encode()
        if kind == "truncated":
            data = data[: len(data) // 2]
        self.send(200, data)


@pytest.fixture
def endpoint():
    servers = []

    def start(*script):
        s = Scripted(script)
        threading.Thread(target=s.serve_forever, daemon=True).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


@pytest.fixture
def image(tmp_path):
    return write_raster(tmp_path / "in.tif", coord_image(40, 56, bands=2) / 7, descriptions=["B1", "B2"])


def expected(image):
    return tilecast.Model.from_callable(lambda b: {"output": b["B1"] + b["B2"]}, inputs=["B1", "B2"],
                                        **PARAMS).predict_image(image).to_numpy()


def remote(server, **kw):
    kw = {"retry": FAST, "concurrency": 2, "max_payload_bytes": 10_000, **kw}
    return tilecast.Model(endpoint_runtime(server.url, **kw), **PARAMS)


def test_retries_recover(endpoint, image):
    server = endpoint("429:0.3", "503", "drop", "ok", "503")
    t0 = time.monotonic()
    with remote(server) as model:
        got = model.predict_image(image).to_numpy()
    assert time.monotonic() - t0 >= 0.3  # Retry-After honoured
    assert np.array_equal(got, expected(image))
    assert server.posts >= 4 + 1


def test_retries_give_up_with_a_clear_error(endpoint, image, tmp_path):
    server = endpoint(*["503"] * 10)
    out = tmp_path / "out.tif"
    with remote(server) as model, pytest.raises(EndpointError, match=r"failed after 4 attempts; last: HTTP 503"):
        model.predict_image(image).to_geotiff(out)
    assert server.posts == 4 and not out.exists()


@pytest.mark.parametrize(("script", "error", "match"), [
    (["ok", "ok", "500"], EndpointError, r"HTTP 500: scripted 500"),
    (["ok", "ok", "truncated"], OutputShapeError, r"not valid JSON"),
    (["ok", "ok", "wrong_shape"], OutputShapeError, r"instance \d+.*predictions\[\d+\]|shape"),
    (["ok", "ok", "wrong_count"], OutputShapeError, r"returned \d+ predictions for \d+ instances"),
])
def test_failures_leave_no_output(endpoint, image, tmp_path, script, error, match):
    server = endpoint(*script)
    out = tmp_path / "out.tif"
    before = set(tmp_path.iterdir())
    with remote(server, concurrency=1) as model, pytest.raises(error, match=match):
        model.predict_image(image).to_geotiff(out)
    assert set(tmp_path.iterdir()) == before  # no output, no temporary file
    assert server.posts == len(script)  # malformed answers and 500s are not retried


def test_timeouts_are_retried_then_reported(endpoint, image):
    server = endpoint("sleep:1.5", "ok")
    with remote(server, timeout=0.5) as model:  # first attempt times out, the retry succeeds
        assert np.array_equal(model.predict_image(image).to_numpy(), expected(image))
    server = endpoint(*["sleep:1.5"] * 3)
    with remote(server, timeout=0.3, retry=RetryPolicy(retries=1, base=0.01)) as model, \
            pytest.raises(EndpointError, match=r"no answer within 0.3 s"):
        model.predict_image(image).to_numpy()


def test_vertex_bearer_token_from_google_auth(endpoint, image, monkeypatch):
    google_auth = pytest.importorskip("google.auth")

    class FakeCredentials:
        token, valid = None, False

        def refresh(self, request):
            self.token, self.valid = "ya29.fake", True

    monkeypatch.setattr(google_auth, "default", lambda scopes=None: (FakeCredentials(), "project"))
    server = endpoint()
    url = server.url.replace("/v1/models/m:predict", "/v1/projects/p/locations/us-central1/endpoints/1:predict")
    with tilecast.Model(endpoint_runtime(url, protocol="vertex", retry=FAST), **PARAMS) as model:
        assert np.array_equal(model.predict_image(image).to_numpy(), expected(image))
    assert set(server.auth) == {"Bearer ya29.fake"}
    server2 = endpoint()
    with tilecast.Model.from_vertex_ai(server2.url.replace("/v1/models/m:predict", "/v1/projects/p/locations/"
                                                           "us-central1/endpoints/1"), token="given", **PARAMS) as m:
        m.predict_image(image).to_numpy()
    assert set(server2.auth) == {"Bearer given"}
