"""``tilecast predict -v``'s one-line profile: model time as the union of the calls, both speeds, same pixels."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

import tilecast
from onnx_models import mean_conv
from tilecast.cli import main
from tilecast.runstats import RunStats, TimedRuntime
from tilecast.runtimes.base import (
    BaseRuntime,
    Signature,
    TensorSpec,
    metadata_of,
    model_path,
    recipe_of,
    releases_inputs,
    streams_of,
)


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_model_time_is_the_union_of_overlapping_calls(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("tilecast.runstats.time.perf_counter", clock)
    stats = RunStats()
    stats.start()
    clock.now = 101.0
    stats.call_started()          # call A: 101 .. 104
    clock.now = 102.0
    stats.call_started()          # call B: 102 .. 105 (overlaps A)
    clock.now = 104.0
    stats.call_ended()
    clock.now = 105.0
    stats.call_ended()
    clock.now = 107.0
    stats.call_started()          # call C: 107 .. 108
    clock.now = 108.0
    stats.call_ended()
    clock.now = 110.0
    stats.stop()
    stats.pixels = 20_000_000
    assert stats.model_seconds == pytest.approx(5.0)  # 101..105 and 107..108, not 3 + 3 + 1
    assert stats.wall_seconds == pytest.approx(10.0)
    assert stats.model_share == pytest.approx(0.5)
    assert stats.model_mpx_s() == pytest.approx(4.0)
    assert stats.pipeline_mpx_s() == pytest.approx(2.0)
    line = stats.summary()
    assert line.startswith("profile: model 50% of 10.0 s") and "model alone 4.00 Mpx/s" in line
    assert "pipeline 2.00 Mpx/s" in line and "\n" not in line


def test_concurrent_calls_from_threads_are_counted_once():
    stats = RunStats()

    class Slow(BaseRuntime):
        signature = Signature((TensorSpec("x", None, None),), (TensorSpec("y", None, None),))
        streams = 4

        def run(self, batch):
            time.sleep(0.2)
            return {"y": batch["x"]}

    timed = TimedRuntime(Slow(), stats)
    stats.start()
    threads = [threading.Thread(target=timed.run, args=({"x": np.zeros(1)},)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats.stop()
    assert stats.calls == 4
    assert 0.19 <= stats.model_seconds < 0.6  # four calls side by side: about one call's time, not four
    assert stats.model_seconds <= stats.wall_seconds


def test_timed_runtime_declares_what_it_wraps(tmp_path):
    path = mean_conv(tmp_path / "m.onnx")
    model = tilecast.Model.from_onnx(path, input_tile_size=32)
    inner = model.runtime
    timed = TimedRuntime(inner, RunStats())
    assert timed.signature == inner.signature
    assert streams_of(timed) == streams_of(inner)
    assert releases_inputs(timed) == releases_inputs(inner)
    assert model_path(timed) == model_path(inner)
    assert dict(metadata_of(timed)) == dict(metadata_of(inner))
    assert recipe_of(timed) == recipe_of(inner)


@pytest.mark.parametrize("resume", [False, True])
def test_stats_leave_the_output_bit_identical(raster, tmp_path, resume):
    data = (np.arange(3 * 150 * 170).reshape(3, 150, 170) % 997).astype("float32")
    path = raster(data)
    onnx = mean_conv(tmp_path / "m.onnx", bands=3)
    model = tilecast.Model.from_onnx(onnx, input_tile_size=64, input_overlap_size=4, layout="NCHW")
    plain = model.predict_image(path).to_geotiff(tmp_path / "plain.tif", resume=resume)
    stats = RunStats()
    timed = model.predict_image(path).to_geotiff(tmp_path / "timed.tif", resume=resume, stats=stats)
    with rasterio.open(plain) as a, rasterio.open(timed) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.tags() == b.tags()
        assert {k: v for k, v in a.profile.items() if k != "nodata"} == \
            {k: v for k, v in b.profile.items() if k != "nodata"}
        assert np.isnan(a.nodata) and np.isnan(b.nodata)
    assert stats.calls > 0 and stats.pixels == 150 * 170
    assert 0 < stats.model_seconds <= stats.wall_seconds


def test_predict_verbose_ends_with_the_profile(raster, tmp_path):
    path = raster((np.arange(120 * 90).reshape(1, 120, 90) % 255).astype("float32"))
    onnx = mean_conv(tmp_path / "m.onnx", k=3)
    args = ["predict", path, "-m", onnx, "--tile", "32", "--overlap", "2", "--layout", "NCHW"]
    quiet = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "a.tif"), "-q"], catch_exceptions=False)
    assert quiet.exit_code == 0 and "profile" not in quiet.output
    loud = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "b.tif"), "-v"], catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    last = loud.output.strip().splitlines()[-1]
    assert last.startswith("profile: model ") and "model alone" in last and "pipeline" in last
    assert "(10.8 Mpx" not in last and "(0.0 Mpx" in last  # 120 x 90 px = 0.01 Mpx
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert "TILECAST_TILE" not in b.tags()  # only an automatic tile is recorded
