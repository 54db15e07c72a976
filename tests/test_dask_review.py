"""Failure paths of Dask runs: each gives one clear error, leaves no thread or process behind, and keeps what a
later ``resume=True`` needs; the resumed output is the local engine's to the bit."""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

import dask  # noqa: E402

import tilecast  # noqa: E402
from resume_helpers import interrupt_after, read  # noqa: E402
from tilecast import Model  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])

UNREACHABLE = "tcp://127.0.0.1:1"  # nothing listens on port 1: every connection is refused


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


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


def stuck_on_one_tile(x):
    """Doubles, but the tile whose first pixel is 7 holds its worker's GIL for 8 s (the way the CPython 3.11 profiler
    deadlock leaves a worker): no heartbeat reaches the scheduler meanwhile."""
    import ctypes

    if (x[:, 0, 0, 0] == 7).any():
        ctypes.PyDLL(None).sleep(8)
    return x * 2


@pytest.mark.timeout(60)
def test_a_stuck_worker_stops_the_run_and_keeps_the_partial_output_to_resume(tmp_path, raster):
    """The stuck-worker error is tilecast's, but nothing in the run is wrong: restarting the cluster and resuming
    must continue, not start over."""
    img = np.ones((1, 48, 48), np.float32)
    img[0, 32, 32] = 7  # the first pixel of the last tile
    path = raster(img)
    pred = Model.from_callable(stuck_on_one_tile, layout="NCHW", input_tile_size=16,
                               output_bands={"y": "float32"}).predict_image(path)
    out = tmp_path / "out.tif"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        with dask.config.set({"distributed.scheduler.worker-ttl": "2s"}), \
                pytest.raises(tilecast.TilecastError, match="has not answered the scheduler"):
            pred.to_geotiff(out, engine=tilecast.Dask(client=c), chunk_size=16)
        manifest = tmp_path / ".out.tif.resume.json"
        assert manifest.exists() and (tmp_path / ".out.tif.partial.tmp.tif").exists()
        import json

        done = json.loads(manifest.read_text())["done"]
        assert 6 <= len(done) <= 8 and 8 not in done  # all but the stuck chunk (and those whose values it held)


def test_an_output_folder_removed_mid_run_reports_the_write_that_failed(tmp_path, raster, client):
    """Keeping the partial output then fails too (its folder is gone); that must not replace the run's own error."""
    import shutil

    _, pred = scene(raster)
    folder = tmp_path / "out"
    folder.mkdir()

    def remove_folder(done, total, pixels):
        shutil.rmtree(folder, ignore_errors=True)

    with pytest.raises(Exception) as info:  # which write fails first varies: the manifest's, or a worker's
        pred.to_geotiff(folder / "o.tif", engine=tilecast.Dask(client=client), chunk_size=16, progress=remove_folder)
    # The first failure (a chunk's write, or recording it), with the failed keep as a note: not the keep's error
    # with the run's own one hidden in its context.
    assert any("could not keep the partial output" in n for n in getattr(info.value, "__notes__", []))
