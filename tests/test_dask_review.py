"""Failure paths of Dask runs: each gives one clear error, leaves no thread or process behind, and keeps what a
later ``resume=True`` needs; the resumed output is the local engine's to the bit."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest
import rasterio

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

import dask  # noqa: E402

import tilecast  # noqa: E402
from resume_helpers import interrupt_after  # noqa: E402
from tilecast import Model  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

UNREACHABLE = "tcp://127.0.0.1:1"  # nothing listens on port 1: every connection is refused


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


def read(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


def double(x):
    return x * 2


def scene(raster) -> tuple[str, tilecast.Prediction]:
    img = np.random.default_rng(0).normal(size=(1, 64, 80)).astype("float32")
    img[:, 5:20, 10:30] = -9999
    path = raster(img, nodata=-9999)
    model = Model.from_callable(double, layout="NCHW", input_tile_size=16, input_overlap_size=2, blend="cosine",
                                output_bands={"y": "float32"})
    return path, model.predict_image(path)


def io_loops() -> int:
    return sum(t.name == "IO loop" for t in threading.enumerate())


def test_an_unreachable_scheduler_is_one_clear_error_within_the_connect_timeout(tmp_path, raster):
    _, pred = scene(raster)
    before = set(os.listdir(tmp_path))
    loops = io_loops()
    t0 = time.monotonic()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(tilecast.SpecError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:1: .*"
                                                     r"distributed\.comm\.timeouts\.connect") as info:
        pred.to_geotiff(tmp_path / "out.tif", engine=tilecast.Dask(scheduler=UNREACHABLE))
    assert time.monotonic() - t0 < 10
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no library traceback behind it
    assert set(os.listdir(tmp_path)) == before  # no partial output for a run that never started
    time.sleep(0.2)
    assert io_loops() == loops  # the failed client's event-loop thread is stopped


def test_an_unreachable_scheduler_leaves_an_interrupted_runs_partial_output_to_resume(tmp_path, raster, client):
    _, pred = scene(raster)
    out = tmp_path / "out.tif"
    local = read(pred.to_geotiff(tmp_path / "local.tif"))
    with pytest.raises(KeyboardInterrupt):
        pred.to_geotiff(out, engine=tilecast.Dask(client=client), chunk_size=16, progress=interrupt_after(6))
    manifest = tmp_path / ".out.tif.resume.json"
    partial = tmp_path / ".out.tif.partial.tmp.tif"
    assert manifest.exists() and partial.exists()
    kept = manifest.read_text()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(tilecast.SpecError):
        pred.to_geotiff(out, engine=tilecast.Dask(scheduler=UNREACHABLE), chunk_size=16, resume=True)
    assert manifest.read_text() == kept and partial.exists()
    resumed = pred.to_geotiff(out, engine=tilecast.Dask(client=client), chunk_size=16, resume=True)
    assert read(resumed).tobytes() == local.tobytes()
    assert sorted(os.listdir(tmp_path)) == ["in0.tif", "local.tif", "out.tif"]
