"""Remote input: a COG served over HTTP with range requests, predicted from its URL, reads only the bytes it needs."""

from __future__ import annotations

import http.server
import os
import re
import threading
from functools import partial

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from onnx_models import mean_conv
from tilecast import Model


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves files with single byte-range support (what GDAL's /vsicurl/ asks for) and counts the bytes sent."""

    served: list[tuple[int, int]]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = self.translate_path(self.path)
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if not match or not os.path.isfile(path):
            return super().do_GET()
        size = os.path.getsize(path)
        start = int(match.group(1))
        end = min(int(match.group(2)) if match.group(2) else size - 1, size - 1)
        if start >= size:
            self.send_error(416)
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            body = fh.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", "image/tiff")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.served.append((start, len(body)))

    def end_headers(self) -> None:
        self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


@pytest.fixture
def server(tmp_path):
    served: list[tuple[int, int]] = []
    handler = type("Handler", (RangeHandler,), {"served": served})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(tmp_path)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def write_cog(path, seed: int) -> np.ndarray:
    """A 1024 x 1024 two-band COG of noise (so it does not compress), 256-pixel blocks, with overviews."""
    img = np.random.default_rng(seed).integers(0, 60000, size=(2, 1024, 1024), dtype=np.uint16)
    tmp = str(path) + ".plain.tif"
    with rasterio.open(tmp, "w", driver="GTiff", width=1024, height=1024, count=2, dtype="uint16",
                       crs="EPSG:32633", transform=from_origin(500000.0, 4600000.0, 10.0, 10.0)) as dst:
        dst.write(img)
    rasterio.shutil.copy(tmp, path, driver="COG", blocksize=256, compress="DEFLATE")
    os.remove(tmp)
    return img


GDAL_REMOTE = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif",
               "GDAL_HTTP_MULTIRANGE": "SINGLE_GET", "VSI_CACHE": "FALSE"}


SLACK = 16
"""COG blocks carry a 4-byte size leader and trailer, which GDAL reads with the block."""


def needed_byte_ranges(path, plan) -> list[tuple[int, int]]:
    """File byte ranges of the TIFF blocks that the plan's read windows touch, adjacent ones merged."""
    ranges = []
    with rasterio.open(path) as ds:
        bh, bw = ds.block_shapes[0]
        blocks = set()
        for tile in plan.tiles():
            w = tile.read
            for r in range(int(w.row_off) // bh, (int(w.row_off + w.height) - 1) // bh + 1):
                for c in range(int(w.col_off) // bw, (int(w.col_off + w.width) - 1) // bw + 1):
                    blocks.add((r, c))
        for r, c in blocks:
            off = int(ds.get_tag_item(f"BLOCK_OFFSET_{c}_{r}", "TIFF", bidx=1))
            ranges.append((off, off + int(ds.get_tag_item(f"BLOCK_SIZE_{c}_{r}", "TIFF", bidx=1))))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(ranges):
        if merged and s <= merged[-1][1] + SLACK:
            merged[-1] = (merged[-1][0], max(e, merged[-1][1]))
        else:
            merged.append((s, e))
    return merged


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_predicting_a_remote_cog_reads_only_the_needed_ranges(tmp_path, server, engine):
    if engine == "dask":
        distributed = pytest.importorskip("distributed")
    base, served = server
    name = f"scene_{engine}.tif"
    img = write_cog(tmp_path / name, seed=1 if engine == "local" else 2)
    size = os.path.getsize(tmp_path / name)
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 3), input_tile_size=64, input_overlap_size=1,
                            output_bands={"mean": "float32"})
    # 200 x 150 px: its tiles touch 2 of the 16 blocks (pixel-interleaved, so both bands).
    bounds = (500000.0 + 300 * 10, 4600000.0 - 450 * 10, 500000.0 + 500 * 10, 4600000.0 - 300 * 10)
    with rasterio.Env(**GDAL_REMOTE):
        pred = model.predict_image(f"/vsicurl/{base}/{name}", bounds=bounds)
        if engine == "dask":
            with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                          dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
                    distributed.Client(cluster) as client:
                out = pred.to_geotiff(tmp_path / "out.tif", engine="dask", client=client, chunk_size=128)
        else:
            out = pred.to_geotiff(tmp_path / "out.tif")
    assert served, "the prediction did not go through the HTTP server"
    needed = needed_byte_ranges(tmp_path / name, pred.plan)
    header_end = min(start for start, _ in needed)
    for start, n in set(served):  # every range is the header or lies inside blocks the tiles need
        assert start < header_end or any(s - SLACK <= start and start + n <= e + SLACK for s, e in needed), (start, n)
    unique = sum(n for _, n in set(served))
    assert unique <= header_end + sum(e - s for s, e in needed)
    assert unique < 0.2 * size, f"read {unique} of {size} bytes"
    local = model.predict_image(str(tmp_path / name), bounds=bounds).to_numpy()
    with rasterio.open(out) as ds:
        assert ds.read().tobytes() == local.tobytes()
        assert ds.shape == (150, 200)
    assert img.shape == (2, 1024, 1024)


class _FakeTransport:
    """Answers each request with its inputs doubled; ``gate`` holds the first request until set; ``fail`` makes the
    first request fail."""

    def __init__(self, gate: threading.Event, fail: bool = False) -> None:
        self.gate, self.fail, self.sent, self.in_flight, self.most = gate, fail, 0, 0, 0
        self.lock = threading.Lock()

    def encode(self, batch, start, stop):
        return {k: v[start:stop] for k, v in batch.items()}

    def size(self, request) -> int:
        return sum(v.nbytes for v in request.values())

    def send(self, request, n, first):
        from tilecast.errors import EndpointError

        with self.lock:
            self.sent += 1
            number = self.sent
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if number == 1:
                assert self.gate.wait(10)
                if self.fail:
                    raise EndpointError("scripted failure")
            return {"y": request["x"] * 2}
        finally:
            with self.lock:
                self.in_flight -= 1


def _fake_runtime(transport, concurrency: int):
    from tilecast.runtimes.http import endpoint_runtime

    rt = endpoint_runtime("projects/p/locations/us-central1/endpoints/1", token="t", concurrency=concurrency,
                          max_payload_bytes=100)  # no metadata to read; one 4x4 float32 tile (64 bytes) per request
    rt.transport.close()
    rt.transport = transport
    return rt


def _wait_for(condition) -> None:
    import time

    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_endpoint_runtime_keeps_two_batches_in_flight():
    from tilecast.runtimes.base import releases_inputs, streams_of

    gate = threading.Event()
    fake = _FakeTransport(gate)
    rt = _fake_runtime(fake, concurrency=4)
    assert streams_of(rt) == 2 and releases_inputs(rt)
    assert streams_of(_fake_runtime(_FakeTransport(gate), concurrency=1)) == 1
    batches = [np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4) + 100 * i for i in range(2)]
    results: dict[int, dict] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: rt.run({"x": batches[i]})})) for i in range(2)]
    threads[0].start()
    _wait_for(lambda: fake.sent >= 2)  # the first call's requests are out; the first one waits at the gate
    threads[1].start()
    _wait_for(lambda: fake.sent >= 4)  # the second call is sent while the first is still unanswered
    assert threads[0].is_alive() and fake.in_flight >= 1
    gate.set()
    for t in threads:
        t.join(10)
    for i in range(2):
        assert np.array_equal(results[i]["y"], batches[i] * 2)
    rt.close()


def test_a_failed_request_stops_the_other_streams_requests():
    """One request thread: the failure is recorded before the thread takes the other call's queued requests, which
    are then not sent; both calls end with the failure."""
    from tilecast.errors import EndpointError

    gate = threading.Event()
    fake = _FakeTransport(gate, fail=True)
    rt = _fake_runtime(fake, concurrency=1)
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            rt.run({"x": np.zeros((3, 1, 4, 4), np.float32) + i})
        except EndpointError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    threads[0].start()
    _wait_for(lambda: fake.sent == 1)
    threads[1].start()
    _wait_for(lambda: rt._active == 2)
    gate.set()
    for t in threads:
        t.join(10)
    assert fake.sent == 1 and len(errors) == 2
    assert all("scripted failure" in str(e) for e in errors)
    rt.run({"x": np.ones((2, 1, 4, 4), np.float32)})  # a later call starts afresh
    assert fake.sent == 3
    rt.close()
