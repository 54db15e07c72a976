"""The resource policy: what it derives from the CPUs, what overrides change, and that the runners follow it."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import tilecast
from onnx_models import mean_conv
from tilecast import Model
from tilecast.resources import GDAL_CACHE_BYTES, ONE_PASS_CACHE_BYTES, Resources
from tilecast.runners.local import run_local
from tilecast.runners.recipe import GdalEnv
from tilecast.runtimes.base import BaseRuntime, Signature, TensorSpec
from tilecast.sinks.memory import ArraySink

MiB = 2**20


@pytest.mark.parametrize(
    ("cpus", "threads", "streams", "readers"),
    [(1, 1, 1, 1), (2, 2, 2, 1), (4, 4, 2, 2), (16, 14, 1, 4)],
)
def test_derived_from_the_cpus(cpus, threads, streams, readers):
    res = Resources.detect(cpus=cpus)
    assert (res.cpus, res.model_threads, res.model_streams, res.read_threads) == (cpus, threads, streams, readers)
    assert res.chunk_read_threads == 1 and res.cog_threads == cpus + 1
    assert (res.reuse_batches, res.spare_batches, res.single_ends) == (True, 2, True)
    assert (res.run_cache_fallback, res.one_pass_cache, res.worker_cache, res.export_cache) == (
        GDAL_CACHE_BYTES, ONE_PASS_CACHE_BYTES, 64 * MiB, 128 * MiB)
    assert (res.worker_mmap_threshold, res.worker_trim_threshold) == (32 * MiB, 64 * MiB)


def test_by_default_from_the_cpus_this_process_may_use(monkeypatch):
    monkeypatch.setattr("tilecast.resources.available_cpus", lambda: 8)
    assert (Resources.detect().cpus, Resources.detect().model_threads) == (8, 6)


@pytest.mark.parametrize(("cpus", "threads", "streams"), [(2, 1, 1), (4, 4, 2), (4, 3, 1), (16, 16, 2), (16, 8, 1)])
def test_streams_follow_the_model_threads(cpus, threads, streams):
    res = Resources.detect(cpus=cpus)
    assert res.streams_for(threads) == streams
    assert Resources.detect(cpus=cpus, model_threads=threads).model_streams == streams


def test_overrides_win_and_are_checked():
    res = Resources.detect(cpus=4, read_threads=3, model_streams=1, cog_threads=2, export_cache=0, single_ends=False)
    assert (res.read_threads, res.model_streams, res.cog_threads, res.export_cache, res.single_ends) == (
        3, 1, 2, 0, False)
    with pytest.raises(tilecast.SpecError, match="unknown resource settings"):
        Resources.detect(threads=2)
    with pytest.raises(tilecast.SpecError, match="read_threads must be at least 1"):
        Resources.detect(cpus=4, read_threads=0)


def test_spreading_the_ends_needs_streams_no_fixed_batch_and_the_policy():
    res = Resources.detect(cpus=2)
    assert res.spread_ends(2, False)
    assert not res.spread_ends(1, False) and not res.spread_ends(2, True)
    assert not Resources.detect(cpus=2, single_ends=False).spread_ends(2, False)


def test_onnx_runtime_defaults_come_from_the_policy(tmp_path):
    from tilecast.runtimes.onnx import OnnxRuntime

    path = mean_conv(tmp_path / "m.onnx", 1, 3)
    for cpus, streams, intra in ((4, 2, 2), (16, 1, 14)):
        rt = OnnxRuntime(path, resources=Resources.detect(cpus=cpus))
        assert (rt.streams, rt.session.get_session_options().intra_op_num_threads) == (streams, intra)


def test_dask_workers_gdal_cache_comes_from_the_policy(monkeypatch):
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    assert GdalEnv.capture().options["GDAL_CACHEMAX"] == 64 * MiB
    assert GdalEnv.capture(resources=Resources.detect(worker_cache=16 * MiB)).options["GDAL_CACHEMAX"] == 16 * MiB
    assert GdalEnv.capture({"GDAL_CACHEMAX": 5}).options["GDAL_CACHEMAX"] == 5


class Recorder(BaseRuntime):
    signature = Signature((TensorSpec("x", None, None),), (TensorSpec("y", None, None),))

    def __init__(self, streams: int, releases: bool) -> None:
        self.streams, self.releases_inputs = streams, releases
        self.sizes: list[int] = []
        self.seen: list[np.ndarray] = []
        self.lock = threading.Lock()

    def run(self, batch):
        x = batch["x"]
        with self.lock:
            self.sizes.append(len(x))
            self.seen.append(x)
        return {"y": x[:, :1] * 2.0}


def _run(raster, runtime, resources, batch_size=6):
    img = np.random.default_rng(0).random((1, 64, 80)).astype("float32")  # 20 tiles of 16
    pred = Model(runtime, input_tile_size=16, batch_size=batch_size, layout="NCHW").predict_image(raster(img))
    sink = ArraySink()
    sink.open(pred.job.profile)
    out = run_local(pred.job, sink, None, resources=resources)
    np.testing.assert_array_equal(out.values[0], img[0] * 2)


@pytest.mark.parametrize("single_ends", [True, False])
def test_the_runner_sends_the_ends_singly_only_when_the_policy_says(raster, single_ends):
    rt = Recorder(streams=2, releases=False)
    _run(raster, rt, Resources.detect(cpus=2, single_ends=single_ends))
    assert sorted(rt.sizes) == sorted([1] * 6 + [6, 2] + [1] * 6 if single_ends else [6, 6, 6, 2])


@pytest.mark.parametrize(("reuse", "spares"), [(True, 2), (True, 0), (False, 2)])
def test_the_runner_reuses_batches_only_when_the_policy_says(raster, reuse, spares):
    rt = Recorder(streams=1, releases=True)
    _run(raster, rt, Resources.detect(cpus=2, reuse_batches=reuse, spare_batches=spares), batch_size=2)
    reused = len({id(x) for x in rt.seen}) < len(rt.seen)
    assert reused == (reuse and spares > 0)


def test_tilecast_cpus_sizes_the_policy_and_is_checked(monkeypatch):
    monkeypatch.setenv("TILECAST_CPUS", "3")
    res = Resources.detect()
    assert (res.cpus, res.writer_threads, res.shared_read_threads, res.cog_threads) == (3, 3, 3, 4)
    assert Resources.detect(cpus=5).cpus == 5  # an explicit count still wins
    monkeypatch.setenv("TILECAST_CPUS", "many")
    with pytest.raises(tilecast.errors.SpecError, match=r"TILECAST_CPUS='many'.*positive integer"):
        Resources.detect()


def test_cli_cpus_reaches_every_part_of_the_run(tmp_path, raster, monkeypatch):
    from click.testing import CliRunner

    from tilecast.cli import main

    monkeypatch.delenv("TILECAST_CPUS", raising=False)
    seen = []
    original = Resources.detect.__func__

    def spy(cls, *a, **k):
        res = original(cls, *a, **k)
        seen.append(res.cpus)
        return res

    monkeypatch.setattr(Resources, "detect", classmethod(spy))
    src = raster(np.ones((1, 64, 64), np.float32))
    model = mean_conv(tmp_path / "m.onnx")
    try:
        result = CliRunner().invoke(main, ["predict", src, "-m", model, "--tile", "32", "--layout", "NCHW",
                                           "--output-band", "mean:float32", "-o", str(tmp_path / "o.tif"), "-q",
                                           "--cpus", "1"])
    finally:  # the command sets it for its process, which here is the test's
        os.environ.pop("TILECAST_CPUS", None)
    assert result.exit_code == 0, result.output
    assert seen and set(seen) == {1}


def test_local_engine_takes_a_policy(tmp_path, raster, monkeypatch):
    """``Local(resources=...)`` is the policy the runner's stages use, and it changes no pixel."""
    import rasterio

    import tilecast.runners.local as local

    spans = []
    original = local.Spans

    def spy(threads, name):
        spans.append(threads)
        return original(threads, name)

    monkeypatch.setattr(local, "Spans", spy)
    src = raster(np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx"), input_tile_size=16, input_overlap_size=4, layout="NCHW",
                            output_bands={"mean": "float32"})
    outputs = []
    for writers in (1, 3):
        policy = Resources.detect(cpus=4, writer_threads=writers)
        out = tmp_path / f"w{writers}.tif"
        model.predict_image(src).to_geotiff(out, engine=tilecast.Local(resources=policy))
        with rasterio.open(out) as ds:
            outputs.append(ds.read())
    assert spans == [1, 3]
    assert (outputs[0] == outputs[1]).all()
