"""The endpoint client under failure: closing or interrupting a run with requests queued, bad credentials, answers
refused for size, empty and big-endian batches. Each server here is a real one on 127.0.0.1 (a free port), stopped
afterwards; payloads are read back with the real parsers.
"""

from __future__ import annotations

import http.server
import json
import signal
import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")

from tilecast.errors import EndpointError, SpecError  # noqa: E402
from tilecast.payloads import tensor_to_b64, v2  # noqa: E402
from tilecast.payloads.protos import PredictRequest  # noqa: E402
from tilecast.remote import RetryPolicy  # noqa: E402
from tilecast.runtimes.http import endpoint_runtime  # noqa: E402


class _V2Handler(http.server.BaseHTTPRequestHandler):
    """KServe v2: metadata for one FP32 input ``x``; each infer answers ``y = 2 x``. The first infer waits at
    ``gate``; ``seen`` counts infer requests and ``headers`` keeps each request's headers."""

    protocol_version = "HTTP/1.1"
    gate: threading.Event
    seen: list[int]
    headers_seen: list[dict[str, str]]

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.headers_seen.append(dict(self.headers))
        meta = {"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}
        self._send(200, json.dumps(meta).encode())

    def do_POST(self) -> None:
        self.headers_seen.append(dict(self.headers))
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(len(self.seen))
        if len(self.seen) == 1:
            self.gate.wait(10)
        hl = self.headers.get(v2.HEADER_LENGTH)
        arrays, head = v2.decode_request(body, int(hl) if hl else None)
        out, headers = v2.encode_response("m", {"y": arrays["x"] * 2}, head.get("id"), binary=True)
        self._send(200, out, headers)


@pytest.fixture
def v2_server():
    gate, seen, headers_seen = threading.Event(), [], []
    handler = type("Handler", (_V2Handler,), {"gate": gate, "seen": seen, "headers_seen": headers_seen})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v2/models/m", gate, seen, headers_seen
    finally:
        gate.set()
        httpd.shutdown()
        httpd.server_close()


ONE_PER_REQUEST = 170
"""max_payload_bytes under which one (1, 4) float32 instance fits a V2_BINARY request, two do not."""


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_closing_the_model_during_a_run_ends_the_run_instead_of_hanging(v2_server):
    """close() from another thread while a run has requests queued: the run ends at once with a clear error and the
    queued requests are not sent (it waited forever: the pool cancelled them behind ``wait``'s back)."""
    url, gate, seen, _ = v2_server
    rt = endpoint_runtime(url, concurrency=1, max_payload_bytes=ONE_PER_REQUEST)
    assert rt.packer.per_request({"x": np.zeros((2, 4), np.float32)}) == 1
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["out"] = rt.run({"x": np.ones((5, 4), np.float32)})
        except BaseException as exc:  # the test inspects whatever ended the run
            result["error"] = exc

    runner = threading.Thread(target=call, daemon=True)
    runner.start()
    _wait_for(lambda: len(seen) == 1)  # the first request is at the server, four wait in the pool
    closer = threading.Thread(target=rt.close, daemon=True)
    closer.start()
    time.sleep(0.2)
    gate.set()
    closer.join(10)
    runner.join(10)
    assert not closer.is_alive() and not runner.is_alive(), "the run hung after close()"
    assert isinstance(result.get("error"), EndpointError), result
    assert "closed" in str(result["error"])
    assert len(seen) == 1


def test_an_interrupted_run_does_not_send_its_queued_requests(v2_server):
    """Ctrl-C while run() waits: the requests still queued are dropped, not sent in the background afterwards."""
    url, gate, seen, _ = v2_server
    rt = endpoint_runtime(url, concurrency=1, max_payload_bytes=ONE_PER_REQUEST)
    main = threading.main_thread().ident

    def interrupt() -> None:
        _wait_for(lambda: len(seen) == 1)
        time.sleep(0.1)
        signal.pthread_kill(main, signal.SIGINT)
        time.sleep(0.3)
        gate.set()

    threading.Thread(target=interrupt, daemon=True).start()
    # Python's own handler, even when the suite runs as a background job (which ignores SIGINT).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            rt.run({"x": np.ones((5, 4), np.float32)})
    finally:
        signal.signal(signal.SIGINT, previous)
    gate.set()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    out = rt.run({"x": x})  # two requests, queued behind whatever the one request thread still had to send
    assert np.array_equal(out["y"], x * 2)
    assert len(seen) == 1 + 2
    rt.close()


SECRET = "s3cret-value"


@pytest.mark.parametrize(("token", "headers", "names"), [
    (SECRET + "\n", {}, "bearer token"),  # a token file's trailing newline
    (SECRET + "\u00e9", {}, "bearer token"),  # httpx: a bare UnicodeEncodeError
    (None, {"X-Api-Key": SECRET + "\r\nX-Injected: 1"}, "'X-Api-Key'"),
    (None, {"Bad Name": SECRET}, "'Bad Name'"),
])
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_bad_credentials_are_refused_up_front_without_quoting_them(v2_server, token, headers, names, scheme):
    """A header value HTTP cannot carry: httpx's error quoted it (the token leaked into the message) and it was
    retried six times; gRPC answered a bare "Invalid metadata". Now one clear error, nothing sent, no secret."""
    url, _, _, headers_seen = v2_server
    if scheme == "grpc":
        url = "grpc://127.0.0.1:9/m"  # nothing listens: the check comes before any connection
    with pytest.raises(SpecError, match=names) as info:
        endpoint_runtime(url, token=token, headers=headers, retry=RetryPolicy(retries=1, base=0.01))
    assert SECRET not in str(info.value)
    assert not headers_seen


def test_grpc_binary_metadata_key_is_a_clear_error():
    with pytest.raises(SpecError, match="-bin"):
        endpoint_runtime("grpc://127.0.0.1:9/m", headers={"X-Trace-Bin": "abc"})


@pytest.fixture
def small_grpc_server():
    """A gRPC server on 127.0.0.1 that takes messages of 1,000 bytes at most (gRPC refuses bigger ones itself)."""
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    from tilecast.payloads import grpc as codec

    def predict(request, context):
        arrays, fmt = codec.decode_request(request)
        return codec.encode_response(fmt, {"y": arrays["x"] * 2}, "m")

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(predict, request_deserializer=PredictRequest.FromString,
                                                       response_serializer=lambda m: m.SerializeToString())})
    server = grpc.server(futures.ThreadPoolExecutor(2), options=[("grpc.max_receive_message_length", 1000)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc://127.0.0.1:{port}/m"
    finally:
        server.stop(None)


def test_grpc_message_over_the_servers_limit_fails_at_once_saying_what_to_lower(small_grpc_server):
    """RESOURCE_EXHAUSTED "Received message larger than max" was retried six times (seconds of backoff) and ended
    with "Is the endpoint up and scaled? Lower --concurrency"."""
    rt = endpoint_runtime(small_grpc_server, max_payload_bytes=100_000)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    assert np.array_equal(rt.run({"x": x})["y"], x * 2)  # small requests go through
    t0 = time.monotonic()
    with pytest.raises(EndpointError, match="larger than max") as info:
        rt.run({"x": np.zeros((4, 1000), np.float32)})
    assert time.monotonic() - t0 < 1.0
    assert "max-payload-bytes" in str(info.value) and "concurrency" not in str(info.value)
    rt.close()


def test_an_empty_batch_is_a_clear_error(v2_server):
    """It raised a bare IndexError from reassembling no answers."""
    url, _, seen, _ = v2_server
    rt = endpoint_runtime(url)
    with pytest.raises(SpecError, match="no instances"):
        rt.run({"x": np.zeros((0, 4), np.float32)})
    assert not seen
    rt.close()


@pytest.mark.parametrize("dtype", [">f4", ">i2", ">u2", ">f8", ">i8", ">f2"])
def test_big_endian_inputs_are_sent_as_their_values(v2_server, dtype):
    """A big-endian array (from np.load of a file written elsewhere) was refused as "dtype >f4 has no KServe v2
    datatype; cast it (e.g. to float32)"; its values now go out little-endian, as every format requires."""
    tf = pytest.importorskip("tensorflow")
    a = np.arange(-4, 4).reshape(2, 4).astype(dtype)
    native = a.astype(a.dtype.newbyteorder("="))
    # KServe v2, through a real server
    url, gate, _, _ = v2_server
    gate.set()
    rt = endpoint_runtime(url, payload_format="V2_BINARY")
    assert np.array_equal(rt.run({"x": a})["y"], native * 2)
    rt.close()
    body, _ = v2.encode_request({"x": a}, binary=False)
    assert json.loads(body)["inputs"][0]["datatype"] == v2.v2_datatype(native.dtype)
    # Earth Engine's tensor strings, read back by TensorFlow's own parser
    parsed = tf.io.parse_tensor(tf.io.decode_base64(tensor_to_b64(a)), tf.as_dtype(native.dtype)).numpy()
    assert parsed.dtype == native.dtype and np.array_equal(parsed, native)


def test_credentials_in_the_url_are_not_quoted_in_errors():
    """Some endpoints take their key in the URL (``?key=``, ``user:password@``); messages quote the URL with those
    parts hidden, so an error report can be shared as is."""
    from tilecast.remote.endpoints import shown_url

    assert shown_url("https://u:s3cret@h.example/v2/models/m/infer?key=s3cret&version=2") == (
        "https://u:***@h.example/v2/models/m/infer?key=***&version=2")
    assert shown_url("http://127.0.0.1:8/v1/models/m:predict?sig=s3cret&access_token=s3cret") == (
        "http://127.0.0.1:8/v1/models/m:predict?sig=***&access_token=***")
    plain = "http://127.0.0.1:8/v2/models/m/infer?version=2"
    assert shown_url(plain) == plain and shown_url("127.0.0.1:8500") == "127.0.0.1:8500"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://u:s3cret@127.0.0.1:{port}/v2/models/m?token=s3cret"
    with pytest.raises(EndpointError) as info:
        runtime = endpoint_runtime(url, retry=RetryPolicy(retries=0, base=0.01), timeout=2)
        runtime.run({"x": np.zeros((1, 1, 4, 4), np.float32)})
    assert "s3cret" not in str(info.value) and "***" in str(info.value)
