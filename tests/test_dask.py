"""The Dask runner on a LocalCluster of 2 worker processes: bit-identical to the local runner, workers write the
outputs, killed workers are survived, the model is loaded once per worker, GDAL settings travel masked."""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from onnx_models import avgpool, mean_conv  # noqa: E402
from resume_helpers import read  # noqa: E402
from tilecast import Model  # noqa: E402
from tilecast.runners.recipe import GdalEnv  # noqa: E402

# Callable models defined here travel to the workers by value (the test module is not importable there).
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit-identical, NaNs included."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def noisy(shape, seed=0, nodata_box=True) -> np.ndarray:
    img = np.random.default_rng(seed).normal(size=shape).astype("float32")
    if nodata_box:
        img[:, 20:70, 30:90] = -9999  # a fully masked tile and partial ones
    return img


@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_dask_cog_is_bit_identical_to_local(tmp_path, raster, client, blend):
    path = raster(noisy((2, 150, 171)), nodata=-9999)
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 5), input_tile_size=24, input_overlap_size=4,
                            blend=blend, batch_size=3, output_bands={"mean": "float32"})
    pred = model.predict_image(path)
    local = pred.to_geotiff(tmp_path / "local.tif")
    out = pred.to_geotiff(tmp_path / "dask.tif", engine="dask", client=client, chunk_size=48)
    assert same(read(out), read(local))
    with rasterio.open(out) as a, rasterio.open(local) as b:
        assert (a.crs, a.transform, a.descriptions) == (b.crs, b.transform, b.descriptions)
        assert str(a.nodata) == str(b.nodata) == "nan"
        assert a.overviews(1) and a.profile["tiled"]
    assert np.isnan(read(out)[0, 30:60, 40:80]).all()  # masked input -> nodata
    assert sorted(os.listdir(tmp_path)) == ["dask.tif", "in0.tif", "local.tif", "m.onnx"]  # no partial files left


def test_output_scaling_and_appended_inputs(tmp_path, raster, client):
    img = noisy((2, 100, 130), seed=3, nodata_box=False)
    path = raster(img)
    down = Model.from_onnx(avgpool(tmp_path / "p.onnx", 2, 2), input_tile_size=32, output_tile_size=16,
                           output_bands={"y": {"type": "float32", "dimensions": 1}}).predict_image(path)
    assert same(read(down.to_geotiff(tmp_path / "d.tif", engine="dask", client=client, chunk_size=32)),
                read(down.to_geotiff(tmp_path / "l.tif")))
    app = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 3), input_tile_size=20, input_overlap_size=1,
                          output_bands={"mean": "float32"}).predict_image(path, append_input=True)
    a = app.to_geotiff(tmp_path / "ad.tif", engine="dask", client=client, chunk_size=40)
    assert same(read(a), read(app.to_geotiff(tmp_path / "al.tif")))
    assert read(a).shape[0] == 3


def test_mosaic_of_mixed_crs_files_matches_local(tmp_path, raster, client):
    img = noisy((1, 80, 100), seed=4, nodata_box=False)
    a = raster(img[:, :, :60], name="a.tif")
    b = raster(img[:, :, 50:], name="b.tif", transform=from_origin(500500.0, 4600000.0, 10.0, 10.0))
    c = tmp_path / "c.tif"  # a third member in Web Mercator
    with rasterio.open(b) as src:
        from rasterio.vrt import WarpedVRT

        with WarpedVRT(src, crs="EPSG:3857") as vrt:
            profile = dict(driver="GTiff", width=vrt.width, height=vrt.height, count=1, dtype="float32",
                           crs=vrt.crs, transform=vrt.transform, nodata=vrt.nodata)
            with rasterio.open(c, "w", **profile) as dst:
                dst.write(vrt.read())
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1,
                            blend="cosine", output_bands={"mean": "float32"})
    pred = model.predict_image([a, b, str(c)])
    assert pred.source.grid.crs == rasterio.crs.CRS.from_epsg(32633)
    out = pred.to_geotiff(tmp_path / "d.tif", engine="dask", client=client, chunk_size=32)
    assert same(read(out), read(pred.to_geotiff(tmp_path / "l.tif")))


def test_lazy_xarray_and_zarr(tmp_path, raster, client):
    path = raster(noisy((2, 90, 110), seed=5), nodata=-9999)
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 3), input_tile_size=16, input_overlap_size=2,
                            blend="cosine", output_bands={"mean": "float32"})
    pred = model.predict_image(path)
    local = pred.to_xarray()
    lazy = pred.to_xarray(engine="dask", chunk_size=40)
    assert lazy.chunks == ((1,), (48, 42), (48, 48, 14))  # whole tiles of 16 px
    assert lazy.rio.crs == local.rio.crs and lazy.rio.transform() == local.rio.transform()
    assert same(lazy.compute().values, local.values)
    xr = pytest.importorskip("xarray")
    store = pred.to_zarr(tmp_path / "out.zarr", engine="dask", client=client, chunk_size=40)
    with xr.open_zarr(store, decode_coords="all") as ds:
        arr = ds["prediction"]
        assert arr.rio.crs == local.rio.crs
        assert same(arr.values, local.values)


def slow_double(x):
    time.sleep(0.08)
    return x * 2


def test_a_killed_worker_does_not_break_the_run(tmp_path, raster, client):
    img = noisy((1, 96, 96), seed=6, nodata_box=False)
    path = raster(img)
    model = Model.from_callable(slow_double, layout="NCHW", input_tile_size=16, batch_size=2,
                                output_bands={"y": "float32"})
    pred = model.predict_image(path)
    pids = list(client.run(os.getpid).values())
    killed = []

    def kill_once(done, total, pixels):
        if done >= 8 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    out = pred.to_geotiff(tmp_path / "d.tif", engine="dask", client=client, chunk_size=16, progress=kill_once)
    assert killed
    assert same(read(out)[0], img[0] * 2)
    client.wait_for_workers(2, timeout=30)


def test_killing_the_only_worker_loses_nothing(tmp_path, raster):
    """With one worker the scattered context dies with it; the runner scatters it again and resubmits."""
    img = noisy((1, 64, 64), seed=8, nodata_box=False)
    pred = Model.from_callable(slow_double, layout="NCHW", input_tile_size=16, batch_size=2,
                               output_bands={"y": "float32"}).predict_image(raster(img))
    killed = []
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as one:
        pid = next(iter(one.run(os.getpid).values()))

        def kill_once(done, total, pixels):
            if done >= 4 and not killed:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        out = pred.to_geotiff(tmp_path / "d.tif", engine="dask", client=one, chunk_size=16, progress=kill_once)
    assert killed
    assert same(read(out)[0], img[0] * 2)


def test_model_is_loaded_once_per_worker(tmp_path, raster, client):
    path = raster(noisy((1, 64, 64), seed=7, nodata_box=False))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=8, input_overlap_size=1,
                            output_bands={"mean": "float32"})

    def builds():
        from tilecast.runners import recipe

        return recipe.BUILDS

    before = client.run(builds)
    model.predict_image(path).to_geotiff(tmp_path / "d.tif", engine="dask", client=client, chunk_size=8)  # 64 tasks
    after = client.run(builds)
    assert all(after[w] - before.get(w, 0) <= 1 for w in after)


def env_probe(x):
    timeout = rasterio.env.getenv().get("GDAL_HTTP_TIMEOUT")
    return np.full(x.shape, float(timeout or -1), dtype=np.float32)


def test_gdal_settings_reach_the_tasks_and_secrets_are_masked(tmp_path, raster, client, monkeypatch):
    path = raster(np.zeros((1, 32, 32), np.float32))
    model = Model.from_callable(env_probe, layout="NCHW", input_tile_size=16, output_bands={"t": "float32"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret")
    with rasterio.Env(GDAL_HTTP_TIMEOUT="17"):
        env = GdalEnv.capture()
        out = model.predict_image(path).to_geotiff(tmp_path / "d.tif", engine="dask", client=client)
    assert (read(out) == 17).all()
    assert "topsecret" not in repr(env) and "***" in repr(env) and "17" in repr(env)


def test_dask_progress_and_performance_report(tmp_path, raster, client, capsys):
    path = raster(np.ones((1, 40, 40), np.float32))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1,
                            output_bands={"mean": "float32"})
    report = tmp_path / "report.html"
    model.predict_image(path).to_geotiff(tmp_path / "d.tif", engine="dask", client=client, progress=True,
                                         performance_report=report)
    err = capsys.readouterr().err
    assert "chunk task(s)" in err and "9/9 tiles" in err
    assert report.exists() and report.stat().st_size > 1000


def plus_one(x):
    return x + 1


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak resident set size


def _peak_rss() -> int:
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def test_worker_memory_stays_bounded_on_a_raster_larger_than_its_limit(tmp_path):
    """A 16384 x 16384 float32 raster (1 GiB in, 1 GiB out) through one worker limited to 400 MiB.

    The input is a sparse GeoTIFF (one real block), so the test is fast but every pixel is still read, predicted
    and written. A worker that held the raster would be paused or killed by its nanny, and the run would not end.
    """
    from rasterio.windows import Window

    n = 16384
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=n, height=n, count=1, dtype="float32", crs="EPSG:32633",
                       transform=from_origin(0, 0, 10, 10), tiled=True, blockxsize=512, blockysize=512,
                       sparse_ok=True) as ds:
        ds.write(np.full((1, 512, 512), 5, np.float32), window=Window(512, 512, 512, 512))
    model = Model.from_callable(plus_one, layout="NCHW", input_tile_size=512, batch_size=4,
                                output_bands={"y": "float32"})
    limit = 400 * 2**20
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, memory_limit=limit,
                                  dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        # A spawned worker's ru_maxrss starts from the parent's high-water mark (Linux keeps it across fork and
        # exec), which is large once the test session has imported TensorFlow: reset the worker's VmHWM instead.
        c.run(_reset_peak_rss)
        out = model.predict_image(str(path)).to_zarr(tmp_path / "out.zarr", engine="dask", client=c, chunk_size=2048)
        peak = max(c.run(_peak_rss).values())
    assert peak < limit, f"worker peak RSS {peak / 2**20:.0f} MiB"
    zarr = pytest.importorskip("zarr")
    arr = zarr.open_group(str(out), mode="r")["prediction"]
    assert arr.shape == (1, n, n)
    assert np.array_equal(arr[0, 510:1030, 1020], np.r_[[1, 1], np.full(512, 6), np.ones(6)].astype(np.float32))


def test_cli_engine_dask_on_a_scheduler(tmp_path, raster, client):
    from click.testing import CliRunner

    from tilecast.cli import main

    path = raster(noisy((2, 70, 90), seed=8))
    onnx = mean_conv(tmp_path / "m.onnx", 2, 3)
    args = ["predict", path, "--model", onnx, "--tile", "16", "--overlap", "1", "--output-band", "mean:float32",
            "--blend", "cosine"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "local.tif"), "-q"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "dask.tif"), "--engine", "dask",
                                    "--scheduler", client.scheduler.address])
    assert res.exit_code == 0, res.output
    assert "chunk task(s)" in res.output and "wrote" in res.output
    assert same(read(tmp_path / "dask.tif"), read(tmp_path / "local.tif"))
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "x.tif"), "--workers", "2"])
    assert res.exit_code != 0 and "--engine dask" in res.output


def _tuned_after_a_task() -> bool:
    from tilecast.runners import recipe

    with recipe.GdalEnv().apply():  # what every worker task does first
        pass
    return recipe._MALLOC_TUNED


def test_workers_get_glibcs_dynamic_malloc_back(client):
    """Dask starts workers with MALLOC_TRIM_THRESHOLD_ set; tilecast resets the thresholds once per worker."""
    import subprocess

    assert set(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values()) == {"65536"}
    assert set(client.run(_tuned_after_a_task).values()) == {True}
    code = "from tilecast.runners.recipe import tune_worker_malloc as t; print(t(), t())"
    base = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    for env, expected in (({**base, "MALLOC_TRIM_THRESHOLD_": "65536"}, ["True", "False"]), (base, ["False", "False"])):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.split() == expected
