"""The same features through a hosted model (``tilecast serve``; KServe v2 and RAW_JSON) give the local predictions."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

gpd = pytest.importorskip("geopandas")
pytest.importorskip("pyogrio")
pytest.importorskip("skl2onnx")
pytest.importorskip("tilecast.runtimes.http")
pytest.importorskip("tilecast.serve")

from shapely.geometry import Point  # noqa: E402

from tabular_models import tabular_classifier  # noqa: E402
from tilecast.features import predict_properties  # noqa: E402
from tilecast.runtimes.http import endpoint_runtime  # noqa: E402
from tilecast.runtimes.onnx import OnnxRuntime  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    _, onx = tabular_classifier(n_features=5, n_classes=4, kind="gbt")
    path = tmp_path_factory.mktemp("served") / "clf.onnx"
    path.write_bytes(onx)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from tilecast.cli import main; main()", "serve", str(path), "--name", "clf",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tilecast serve did not start: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.2)
        yield path, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


@pytest.mark.parametrize(("route", "payload_format"), [("/v2/models/clf", None),
                                                       ("/v1/models/clf:predict", "RAW_JSON")])
def test_endpoint_matches_local(served, route, payload_format):
    path, base = served
    rng = np.random.default_rng(3)
    n = 300
    values = rng.normal(size=(n, 5))
    gdf = gpd.GeoDataFrame({f"f{i}": values[:, i] for i in range(5)},
                           geometry=[Point(x, y) for x, y in rng.uniform(0, 1, (n, 2))], crs="EPSG:4326")
    kw = dict(input_properties=[f"f{i}" for i in range(5)],
              output_properties=["cls=label:int32", "p=probabilities:float32:1"], batch_size=128)
    local = predict_properties(OnnxRuntime(path), gdf, **kw)
    remote = endpoint_runtime(base + route, payload_format=payload_format, max_payload_bytes=8_000)
    try:
        got = predict_properties(remote, gdf, **kw)
    finally:
        remote.close()
    assert got["cls"].dtype == np.int32
    np.testing.assert_array_equal(got["cls"], local["cls"])
    np.testing.assert_allclose(np.stack(got["p"]), np.stack(local["p"]), rtol=1e-6, atol=1e-7)
