"""Failure paths and edge cases of the streaming local pipeline (runners/local.py and what it drives).

A failing stage must stop every thread, raise one error and leave no file behind; it must never hang. Runs that
could hang run on a helper thread that the test waits for with a timeout, so a regression fails instead of
blocking the suite.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import tilecast
import tilecast.job
import tilecast.resources
from tilecast import Model
from tilecast.resources import Resources


def _identity(**kw) -> Model:
    return Model.from_callable(
        lambda x: x.astype("float32"),
        layout="NCHW",
        input_tile_size=16,
        batch_size=2,
        output_bands={"a": "float32"},
        **kw,
    )


def _finishes(fn, timeout: float = 20.0) -> BaseException | None:
    """Run ``fn`` on a daemon thread; its error (None if it returned). Fails the test if it is still running after
    ``timeout`` seconds: the pipeline hung."""
    result: list[BaseException | None] = []

    def target() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:  # handed to the test
            result.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "the run hung"
    return result[0]


def _tilecast_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tilecast")]


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if "tilecast" in p.name or p.name.startswith("out"))


def test_writer_that_fails_before_its_first_tile_stops_the_run(tmp_path, raster, monkeypatch):
    """The writer thread's setup (the assembler's buffers) can fail, e.g. with a MemoryError; that error must reach
    the caller, not leave the model thread blocked forever on the writer's full queue."""
    src = raster(np.arange(160 * 160, dtype="float32").reshape(160, 160))  # 100 tiles: far more than the queue holds

    def no_memory(self, *a, **k):
        raise MemoryError("no room for the assembly buffers")

    monkeypatch.setattr(tilecast.job.Job, "assembler", no_memory)
    before = set(_tilecast_threads())
    error = _finishes(
        lambda: (
            _identity()
            .predict_image(src)
            .to_geotiff(tmp_path / "out.tif", engine=tilecast.Local(resources=Resources.detect(2)))
        )
    )
    assert isinstance(error, MemoryError)
    assert _leftovers(tmp_path) == []
    assert set(_tilecast_threads()) <= before


def test_sink_that_fails_to_open_leaves_no_temporary_file(tmp_path, raster, monkeypatch):
    """The temporary GeoTIFF exists once open has created it; a later step of open that fails (here the streamed
    overview level, on a full disk) must remove it: the runner aborts only sinks that opened."""
    from tilecast.sinks import geotiff

    src = raster(np.arange(64 * 64, dtype="float32").reshape(64, 64))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(geotiff, "OverviewWriter", full_disk)
    with pytest.raises(tilecast.errors.OutputError, match="No space left"):
        _identity().predict_image(src).to_geotiff(tmp_path / "out.tif")
    assert _leftovers(tmp_path) == []


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open file descriptors in /proc")
def test_runs_of_one_prediction_do_not_accumulate_file_handles(tmp_path, raster, monkeypatch):
    """Every run starts new reading (and decoding) threads, and each opens its own handle on the input; the
    handles of threads that have ended must be closed, or a long-lived prediction written again and again runs out
    of file descriptors."""
    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: 4)
    src = raster(np.arange(200 * 200, dtype="float32").reshape(200, 200))
    pred = _identity().predict_image(src)
    open_fds = []
    for _ in range(5):
        pred.to_geotiff(tmp_path / "out.tif", overwrite=True)
        open_fds.append(len(os.listdir("/proc/self/fd")))
    assert open_fds[-1] <= open_fds[1], open_fds


def test_warped_shared_handle_reads_without_deadlock(raster):
    """A dataset that cannot be opened again (here its file was removed after it was opened; an in-memory MEM
    dataset is another) is read through one handle under the source's lock; the warped VRT made on the first read
    must not take that same lock again."""
    import rasterio

    data = np.arange(64 * 64, dtype="float32").reshape(1, 64, 64)
    path = raster(data)
    with rasterio.open(path) as ds:
        os.remove(path)
        model = Model.from_callable(
            lambda x: x,
            layout="NCHW",
            input_tile_size=32,
            crs="EPSG:32633",
            resolution=20,
            fix_input_proj=True,
            resampling="nearest",
            output_bands={"v": "float32"},
        )
        result: list = []
        error = _finishes(lambda: result.append(model.predict_image(ds).to_numpy()), timeout=15)
    assert error is None
    np.testing.assert_array_equal(result[0][0], data[0, 1::2, 1::2])  # nearest: the pixel under each centre


def test_a_failed_run_stops_reading_promptly(tmp_path, raster, monkeypatch):
    """Once the model fails, the reads still queued (or not yet queued) are not run: on slow (remote) inputs each
    one is time before the error reaches the caller."""
    import time

    src = raster(np.arange(256 * 256, dtype="float32").reshape(256, 256))  # 256 tiles
    failed = threading.Event()
    late: list[int] = []
    read = tilecast.job.Job.read

    def slow_read(self, tile):
        if failed.is_set():
            late.append(1)
        time.sleep(0.05)
        return read(self, tile)

    def fails(x):
        failed.set()
        raise ValueError("the model failed")

    monkeypatch.setattr(tilecast.job.Job, "read", slow_read)
    model = Model.from_callable(fails, layout="NCHW", input_tile_size=16, batch_size=8, output_bands={"a": "float32"})
    engine = tilecast.Local(threads=2, resources=Resources.detect(2))
    with pytest.raises(ValueError, match="the model failed"):
        model.predict_image(src).to_geotiff(tmp_path / "out.tif", engine=engine)
    assert len(late) <= 4  # those the two reading threads started meanwhile (about 20 were queued)
    assert _leftovers(tmp_path) == []


def test_resumable_output_that_fails_to_prepare_leaves_nothing(tmp_path, raster, monkeypatch):
    """A resumable run creates its partial file before the runner's abort handler starts; a later step of that
    creation (here the metadata, on a full disk) must remove it and say what failed as an OutputError."""
    from tilecast.sinks import chunked

    src = raster(np.arange(64 * 64, dtype="float32").reshape(64, 64))

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunked.PartialGeoTIFFSink, "_write_metadata", full_disk)
    with pytest.raises(tilecast.errors.OutputError, match=r"partial file.*No space left"):
        _identity().predict_image(src).to_geotiff(tmp_path / "out.tif", resume=True)
    assert _leftovers(tmp_path) == []


def test_a_custom_sink_whose_open_fails_is_aborted(raster):
    """Any sink, not only tilecast's own: an open that fails partway gets abort, which cleans up what it made."""
    from tilecast.sinks.base import BaseSink

    calls = []

    class HalfOpen(BaseSink):
        def open(self, profile):
            calls.append("open")
            raise OSError("the sink's own storage refused")

        def abort(self):
            calls.append("abort")

    src = raster(np.arange(32 * 32, dtype="float32").reshape(32, 32))
    with pytest.raises(OSError, match="refused"):
        _identity().predict_image(src).run(HalfOpen())
    assert calls == ["open", "abort"]
