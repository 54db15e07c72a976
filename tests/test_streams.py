"""Concurrent model calls ("streams"): every runner keeps a runtime's streams busy, and results never change."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st

import tilecast
from onnx_models import mean_conv
from tilecast import Model
from tilecast.runners.ordered import in_order
from tilecast.runtimes.base import run_split, streams_of
from tilecast.runtimes.callable import CallableRuntime
from tilecast.runtimes.onnx import OnnxRuntime
from tilecast.serve.models import Batcher


class Tracker:
    """A model function that records how many calls overlap (each call takes ``seconds``)."""

    def __init__(self, seconds: float = 0.02) -> None:
        self.seconds, self.active, self.most, self.sizes = seconds, 0, 0, []
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray | dict[str, np.ndarray]) -> np.ndarray:
        first = next(iter(x.values())) if isinstance(x, dict) else None  # per-property inputs: the first, doubled
        x = x if first is None else first[:, None]
        with self.lock:
            self.active += 1
            self.most = max(self.most, self.active)
            self.sizes.append(len(x))
        time.sleep(self.seconds)
        with self.lock:
            self.active -= 1
        return x[:, :1] * 2.0 if first is None else first * 2.0


def tracked(streams: int | None, seconds: float = 0.02) -> tuple[CallableRuntime, Tracker]:
    fn = Tracker(seconds)
    runtime = CallableRuntime(fn)
    if streams is not None:
        runtime.streams = streams  # type: ignore[attr-defined]
    return runtime, fn


# --------------------------------------------------------------------------------------------------- in_order


@settings(max_examples=60, deadline=None)
@given(items=st.lists(st.integers(-50, 50), max_size=40), ahead=st.integers(1, 5), workers=st.integers(1, 4))
def test_in_order_keeps_order_and_bounds_what_runs_ahead(items, ahead, workers):
    submitted = yielded = 0
    most = 0

    def source():
        nonlocal submitted, most
        for x in items:
            submitted += 1
            most = max(most, submitted - yielded)
            yield x

    with ThreadPoolExecutor(workers) as ex:
        out = []
        for item, value in in_order(ex, source(), lambda x: (time.sleep(0.0005 * (x % 3)), x * x)[1], ahead):
            yielded += 1
            out.append((item, value))
    assert out == [(x, x * x) for x in items]
    assert most <= ahead + 1


@settings(max_examples=60, deadline=None)
@given(weights=st.lists(st.integers(0, 8), max_size=40), ahead=st.integers(1, 16), workers=st.integers(1, 3))
def test_in_order_with_weights_bounds_the_weight_running_ahead(weights, ahead, workers):
    pending: list[int] = []  # weights pulled and not yet yielded, oldest first
    most = 0

    def source():
        nonlocal most
        for i, w in enumerate(weights):
            pending.append(max(1, w))
            most = max(most, sum(pending[1:]))
            yield i

    with ThreadPoolExecutor(workers) as ex:
        out = []
        for item, value in in_order(ex, source(), lambda i: i * 3, ahead, weight=lambda i: weights[i]):
            pending.pop(0)
            out.append((item, value))
    assert out == [(i, i * 3) for i in range(len(weights))]
    assert most <= ahead - 1 + max([1, *weights])


def test_in_order_without_an_executor_calls_lazily():
    calls = []
    gen = in_order(None, [1, 2, 3], lambda x: calls.append(x) or x, 4)
    assert calls == []
    assert next(gen) == (1, 1) and calls == [1]
    assert list(gen) == [(2, 2), (3, 3)]


# ----------------------------------------------------------------------------------------------- OnnxRuntime


def _intra(rt: OnnxRuntime) -> int:
    return rt.session.get_session_options().intra_op_num_threads


@pytest.mark.parametrize(("cpus", "streams", "intra"), [(1, 1, 1), (2, 2, 1), (4, 2, 2), (8, 1, 6), (16, 1, 14)])
def test_onnx_streams_by_default_only_where_the_model_takes_every_cpu(tmp_path, monkeypatch, cpus, streams, intra):
    monkeypatch.setattr("tilecast.resources.available_cpus", lambda: cpus)
    rt = OnnxRuntime(mean_conv(tmp_path / "m.onnx", 1, 3))
    assert (rt.streams, _intra(rt)) == (streams, intra)
    assert streams_of(rt) == streams


def test_onnx_streams_and_threads_can_be_set(tmp_path):
    path = mean_conv(tmp_path / "m.onnx", 1, 3)
    rt = OnnxRuntime(path, threads=6, streams=3)
    assert (rt.streams, _intra(rt)) == (3, 2)
    assert "streams=3" in repr(rt)
    with pytest.raises(tilecast.SpecError, match="streams"):
        OnnxRuntime(path, streams=0)


# ------------------------------------------------------------------------------------------ runners use them


@pytest.mark.parametrize("streams", [None, 1, 2, 3])
def test_local_runner_keeps_the_runtimes_streams_busy_and_no_more(raster, streams):
    img = np.random.default_rng(0).random((2, 64, 64)).astype("float32")
    runtime, fn = tracked(streams)
    out = Model(runtime, input_tile_size=16, batch_size=2, layout="NCHW").predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    assert fn.most == (streams or 1)


@pytest.mark.parametrize("streams", [1, 2])
def test_chunked_runner_keeps_the_runtimes_streams_busy(tmp_path, raster, streams):
    img = np.random.default_rng(1).random((2, 64, 64)).astype("float32")
    runtime, fn = tracked(streams)
    path = Model(runtime, input_tile_size=16, batch_size=2, layout="NCHW").predict_image(raster(img)).to_geotiff(
        tmp_path / "out.tif", resume=True, progress=False)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), img[0] * 2)
    assert fn.most == streams


@pytest.mark.parametrize("streams", [1, 2])
def test_the_first_and_last_batches_go_out_a_tile_at_a_time_only_with_streams(raster, streams):
    img = np.random.default_rng(3).random((2, 64, 80)).astype("float32")  # 4 x 5 = 20 tiles, batches of 6
    runtime, fn = tracked(streams, seconds=0.001)
    out = Model(runtime, input_tile_size=16, batch_size=6, layout="NCHW").predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out[0], img[0] * 2)
    # with streams the first and last 6 tiles are single calls, so both streams start at once and finish together;
    # one stream keeps whole batches
    want = [1] * 6 + [6, 2] + [1] * 6 if streams == 2 else [6, 6, 6, 2]
    assert fn.sizes == want


def test_the_last_tiles_run_beside_the_last_big_batch(raster):
    """Calls take 20 ms per tile. 32 tiles in batches of 6 make six single calls, three of 6, one of 2 and six
    single calls: while one stream runs the third batch of 6, the other takes the 2 and then the last singles
    instead of waiting for that batch to finish (the model stage runs ahead by tiles, not by calls)."""
    img = np.random.default_rng(6).random((1, 32, 256)).astype("float32")  # 2 x 16 tiles of 16
    spans: list[tuple[int, float, float]] = []
    lock = threading.Lock()

    def fn(x):
        start = time.perf_counter()
        time.sleep(0.02 * len(x))
        with lock:
            spans.append((len(x), start, time.perf_counter()))
        return x * 2.0

    runtime = CallableRuntime(fn)
    runtime.streams = 2  # type: ignore[attr-defined]
    out = Model(runtime, input_tile_size=16, batch_size=6, layout="NCHW").predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out, img * 2)
    assert sorted(n for n, _, _ in spans) == [1] * 12 + [2, 6, 6, 6]
    last_big_end = max(end for n, _, end in spans if n == 6)
    last_singles = sorted(start for n, start, _ in spans if n == 1)[-6:]
    beside = sum(start < last_big_end for start in last_singles)
    assert beside >= 3  # counted in calls, at most one single could start before it ended


def test_the_chunked_runner_ends_each_chunk_a_tile_at_a_time(tmp_path, raster):
    img = np.random.default_rng(4).random((2, 64, 64)).astype("float32")
    runtime, fn = tracked(2, seconds=0.001)
    model = Model(runtime, input_tile_size=16, batch_size=4, layout="NCHW")
    path = model.predict_image(raster(img)).to_geotiff(tmp_path / "out.tif", resume=True, chunk_size=32,
                                                       progress=False)
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(ds.read(1), img[0] * 2)
    assert fn.sizes == [1] * 16  # four chunks of 2 x 2 tiles: each is its own tail


def test_masked_tiles_among_single_calls_are_skipped_not_sent(raster):
    img = np.random.default_rng(5).random((1, 32, 64)).astype("float32")  # 2 x 4 = 8 tiles, batches of 4
    img[:, 16:, 32:48] = -1  # tile 7 of 8 (row 1, col 2) is fully masked
    runtime, fn = tracked(2, seconds=0.001)
    out = Model(runtime, input_tile_size=16, batch_size=4, layout="NCHW").predict_image(
        raster(img, nodata=-1)).to_numpy()
    assert fn.sizes == [1] * 7  # the first and last 4 tiles go singly; the masked one is never sent
    np.testing.assert_array_equal(out[0, :, :32], img[0, :, :32] * 2)
    np.testing.assert_array_equal(out[0, :16], img[0, :16] * 2)


@pytest.mark.parametrize("streams", [1, 2])
def test_packed_batches_are_reused_only_for_runtimes_that_release_them(tmp_path, raster, streams):
    img = np.random.default_rng(7).random((1, 64, 96)).astype("float32")  # 24 tiles of 16, batches of 2
    onnx_rt = OnnxRuntime(mean_conv(tmp_path / "m.onnx", 1, 3), threads=streams, streams=streams)
    seen: list[np.ndarray] = []  # held, so an array seen twice is the same array, not a recycled address
    run = onnx_rt.run

    def recording(batch):
        seen.append(next(iter(batch.values())))
        return run(batch)

    onnx_rt.run = recording  # type: ignore[method-assign]
    kept: list[tuple[np.ndarray, np.ndarray]] = []

    def keeps_its_inputs(x):  # a callable may hold on to what it was given: its batches must never be reused
        kept.append((x, x.copy()))
        return onnx_rt.session.run(None, {"image": x})[0]

    params = dict(input_tile_size=16, input_overlap_size=1, batch_size=2, layout="NCHW")
    out = Model(onnx_rt, **params).predict_image(raster(img)).to_numpy()
    callable_rt = CallableRuntime(keeps_its_inputs)
    callable_rt.streams = streams  # type: ignore[attr-defined]
    want = Model(callable_rt, **params).predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out, want)
    assert len({id(x) for x in seen}) < len(seen)  # ONNX Runtime got the same arrays again
    assert all(np.array_equal(x, copy) for x, copy in kept)  # the callable's were left alone


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_streams_do_not_change_a_single_bit(tmp_path, raster, blend):
    """Real ONNX Runtime sessions with 1, 2 and 3 streams, through the streaming and the chunked runner."""
    img = np.random.default_rng(2).random((1, 90, 70)).astype("float32")
    src = raster(img)
    onnx = mean_conv(tmp_path / "m.onnx", 1, 5)
    outs = []
    for streams in (1, 2, 3):
        model = Model(OnnxRuntime(onnx, threads=3, streams=streams), input_tile_size=16, input_overlap_size=4,
                      batch_size=3, blend=blend)
        outs.append(model.predict_image(src).to_numpy())
        path = model.predict_image(src).to_geotiff(tmp_path / f"{streams}.tif", resume=True, progress=False)
        with rasterio.open(path) as ds:
            outs.append(ds.read())
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)


def test_card_scaling_keeps_the_wrapped_runtimes_streams(tmp_path):
    from tilecast.runtimes.scaled import ScaledRuntime

    assert ScaledRuntime(OnnxRuntime(mean_conv(tmp_path / "m.onnx", 1, 3), threads=2, streams=2)).streams == 2


# ----------------------------------------------------------------------------------------------- run_split


def test_run_split_slices_rows_over_the_streams_and_joins_them():
    runtime, fn = tracked(3, seconds=0.05)
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    with ThreadPoolExecutor(2) as ex:
        out = run_split(runtime, {"x": x}, ex)
    np.testing.assert_array_equal(out["output"], x[:, :1] * 2)
    assert sorted(fn.sizes) == [3, 3, 4] and fn.most == 3


def test_run_split_runs_whole_batches_when_it_cannot_split():
    runtime, fn = tracked(2)
    x = np.ones((1, 2), np.float32)
    with ThreadPoolExecutor(1) as ex:
        run_split(runtime, {"x": x}, ex)  # one row: nothing to split
    assert fn.sizes == [1]

    def total(x):  # not one output row per input row: the slices cannot be joined
        return np.array([x.sum()])

    per_batch = CallableRuntime(total)
    per_batch.streams = 2  # type: ignore[attr-defined]
    with ThreadPoolExecutor(1) as ex:
        out = run_split(per_batch, {"x": np.ones((6, 2), np.float32)}, ex)
    np.testing.assert_array_equal(out["output"], [12.0])


def test_predict_features_uses_the_streams(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    from tilecast.features import predict_properties

    runtime, fn = tracked(2, seconds=0.05)
    frame = gpd.GeoDataFrame({"a": np.arange(8.0), "b": np.ones(8)}, geometry=[Point(i, i) for i in range(8)],
                             crs="EPSG:4326")
    out = predict_properties(runtime, frame, output_properties={"output": "float32"}, input_properties=["a", "b"])
    np.testing.assert_array_equal(out["output"], np.arange(8.0) * 2)
    assert fn.most == 2 and sorted(fn.sizes) == [4, 4]


# ---------------------------------------------------------------------------------------------------- serve


@pytest.mark.parametrize("max_batch", [1, 4])
def test_server_batcher_runs_up_to_streams_calls_at_once(max_batch):
    fn = Tracker(0.05)

    async def main():
        batcher = Batcher(lambda arrays: {"y": fn(arrays["x"])}, max_batch, 0.001, streams=2)
        try:
            xs = [np.full((1, 2), i, np.float32) for i in range(8)]
            outs = await asyncio.gather(*(batcher.infer({"x": x}) for x in xs))
        finally:
            await batcher.close()
        return xs, outs

    xs, outs = asyncio.run(main())
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], x[:, :1] * 2)
    assert fn.most == 2


def test_one_stream_is_the_same_model_on_all_threads(tmp_path, monkeypatch):
    """A large automatic tile runs one call at a time on every thread (see ``autotile.ONE_STREAM_PIXELS``): the same
    outputs, one stream, every thread in it; a runtime whose streams were given keeps them."""
    monkeypatch.setattr("tilecast.resources.available_cpus", lambda: 4)
    path = mean_conv(tmp_path / "m.onnx", 1, 3)
    rt = OnnxRuntime(path)
    one = rt.one_stream()
    assert (rt.streams, _intra(rt)) == (2, 2) and (one.streams, _intra(one)) == (1, 4)
    assert one.one_stream() is one and OnnxRuntime(path, streams=2).one_stream().streams == 2
    x = np.random.default_rng(0).random((2, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(rt.run({"image": x})["mean"], one.run({"image": x})["mean"])
    np.testing.assert_array_equal(rt.run({"image": x})["mean"], rt.run_released({"image": x})["mean"])


def test_auto_runs_large_tiles_on_one_stream(tmp_path, raster, monkeypatch):
    import tilecast.autotile

    monkeypatch.setattr("tilecast.resources.available_cpus", lambda: 2)
    data = np.arange(300 * 400, dtype=np.float32).reshape(1, 300, 400)
    src = raster(data)
    model = tilecast.Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size="auto",
                                     input_overlap_size=4, layout="NCHW", output_bands={"mean": "float32"})
    small = model.predict_image(src)
    monkeypatch.setattr(tilecast.autotile, "ONE_STREAM_PIXELS", 1)  # every call counts as large
    large = model.predict_image(src)
    assert streams_of(small.model.runtime) == 2 and streams_of(large.model.runtime) == 1
    assert streams_of(model.runtime) == 2  # the model itself is unchanged
    small.to_geotiff(tmp_path / "a.tif")
    large.to_geotiff(tmp_path / "b.tif")
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
