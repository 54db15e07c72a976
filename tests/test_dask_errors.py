"""Errors cross from Dask workers to the client as themselves: every tilecast error pickles (also the way Distributed
sends it, with its chain and traceback), and a raster corrupted (or deleted) after planning stops the run, a
prediction or an export, with a SourceReadError (SourceNotFoundError) that names the file and window, leaving no
partial output."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import tilecast
from onnx_models import mean_conv
from tilecast import Model, errors

CLASSES = [getattr(errors, name) for name in errors.__all__]


def raised(cls: type[BaseException]) -> BaseException:
    """An instance raised while handling another error, so it carries a traceback and a context."""
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise cls(f"{cls.__name__}: the problem; the fix") from None
    except (Exception, Warning) as exc:
        return exc


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_round_trips_through_pickle(cls):
    exc = raised(cls)
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is cls and again.args == exc.args and str(again) == str(exc)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_survives_distributed_serialization(cls):
    pytest.importorskip("distributed")
    from distributed.core import error_message
    from distributed.protocol import pickle as dask_pickle

    exc = raised(cls)
    again = dask_pickle.loads(error_message(exc)["exception"].data)
    assert type(again) is cls and str(again) == str(exc)


def test_builtin_attributes_survive_pickling():
    again = pickle.loads(pickle.dumps(tilecast.MissingExtraError("pip install 'tilecast[torch]'", name="torch")))
    assert again.name == "torch"
    assert isinstance(pickle.loads(pickle.dumps(tilecast.SourceReadError("x"))), OSError)


def test_a_gdal_error_chain_is_cut_so_the_tilecast_error_arrives():
    pytest.importorskip("distributed")
    from distributed.core import error_message
    from distributed.protocol import pickle as dask_pickle

    from tilecast.runners.recipe import errors_reach_client
    from tilecast.sources.rasterio_source import open_dataset

    with pytest.raises(tilecast.SourceNotFoundError) as info, errors_reach_client():
        open_dataset("/nonexistent/in.tif")  # raised while handling rasterio's error, whose GDAL cause won't unpickle
    again = dask_pickle.loads(error_message(info.value)["exception"].data)
    assert type(again) is tilecast.SourceNotFoundError and "not found" in str(again)


def spoil(path: str, how: str) -> None:
    if how == "truncated":  # the header stays readable, most tiles are gone
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        os.remove(path)


def spoiled_after_planning(tmp_path, raster, how: str = "truncated"):
    path = raster(np.random.default_rng(0).normal(size=(1, 96, 96)).astype("float32"))
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1,
                            output_bands={"mean": "float32"})
    pred = model.predict_image(path)
    spoil(path, how)
    return path, pred


MESSAGE = r"cannot read rows \d+:\d+, cols \d+:\d+ of .*in0\.tif: .*TIFFReadEncodedTile.* truncated, corrupt .*again"


def test_a_corrupted_raster_gives_a_source_read_error_locally(tmp_path, raster):
    _, pred = spoiled_after_planning(tmp_path, raster)
    with pytest.raises(tilecast.SourceReadError, match=MESSAGE):
        pred.to_geotiff(tmp_path / "out.tif", progress=None)
    assert sorted(os.listdir(tmp_path)) == ["in0.tif", "m.onnx"]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


def test_a_raster_corrupted_after_planning_stops_the_dask_run_with_a_tilecast_error(tmp_path, raster, client):
    _, pred = spoiled_after_planning(tmp_path, raster)
    with pytest.raises(tilecast.SourceReadError, match=MESSAGE) as info:
        pred.to_geotiff(tmp_path / "out.tif", engine="dask", client=client, chunk_size=32)
    assert isinstance(info.value, (tilecast.InputError, OSError))
    # A tilecast error recurs, so the partial output and its manifest are removed rather than kept for resume.
    assert sorted(os.listdir(tmp_path)) == ["in0.tif", "m.onnx"]


def test_an_input_gone_before_the_dask_run_is_reported_missing(tmp_path, raster, client):
    _, pred = spoiled_after_planning(tmp_path, raster, "deleted")
    with pytest.raises(tilecast.SourceNotFoundError, match=r"in0\.tif no longer exists: .*deleted.*put it back"):
        pred.to_geotiff(tmp_path / "out.tif", engine="dask", client=client)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


def test_an_in_memory_input_is_still_reported_as_one():
    import rasterio
    from rasterio.transform import from_origin

    from tilecast.runners.recipe import source_recipe
    from tilecast.sources.rasterio_source import RasterioSource

    with rasterio.open("", "w", driver="MEM", width=8, height=8, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=from_origin(500000, 4600000, 10, 10)) as ds:
        source = RasterioSource(ds)
        with pytest.raises(tilecast.SpecError, match="in-memory dataset; pass a path or URL"):
            source_recipe(source)


def test_a_truncated_mosaic_member_stops_the_dask_run_with_a_tilecast_error(tmp_path, raster, client):
    from rasterio.transform import from_origin

    img = np.random.default_rng(0).normal(size=(1, 64, 96)).astype("float32")
    pieces = [raster(img[:, :, c : c + 48], name=f"p{c}.tif", transform=from_origin(500000 + c * 10, 4600000, 10, 10))
              for c in (0, 48)]
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1,
                            output_bands={"mean": "float32"})
    pred = model.predict_image(pieces)
    spoil(pieces[1], "truncated")
    with pytest.raises(tilecast.SourceReadError, match=r"of the mosaic from member .*p48\.tif: .*again"):
        pred.to_geotiff(tmp_path / "out.tif", engine="dask", client=client, chunk_size=32)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "p0.tif", "p48.tif"]


SPOILED = {"truncated": (tilecast.SourceReadError, MESSAGE), "deleted": (tilecast.SourceNotFoundError,
                                                                         r"input raster not found: .*in0\.tif")}


@pytest.mark.parametrize("how", SPOILED)
@pytest.mark.parametrize("export", ["image", "samples"])
def test_export_tasks_send_the_tilecast_error_and_leave_nothing(tmp_path, raster, client, monkeypatch, export, how):
    """Export tasks go through the same wrapper as prediction chunks: the GDAL error behind a missing or truncated
    input no longer turns the tilecast error into a bare Exception on the client."""
    from tilecast.export import dask as image_dask
    from tilecast.export import dask_samples, export_image, export_samples

    path = raster(np.random.default_rng(0).normal(size=(1, 96, 96)).astype("float32"))
    labels = raster(np.ones((96, 96), "uint8"), name="labels.tif")
    module = image_dask if export == "image" else dask_samples
    announce = module.announce

    def planned(*args):  # the client has planned the export and is about to start the tasks
        spoil(path, how)
        announce(*args)

    monkeypatch.setattr(module, "announce", planned)
    out = tmp_path / "out"
    out.mkdir()
    error, message = SPOILED[how]
    with pytest.raises(error, match=message):
        if export == "image":
            export_image(path, out, 16, engine="dask", client=client, chunk_rows=2, progress=False)
        else:
            export_samples(path, out / "s.csv", label_raster=labels, engine="dask", client=client,
                           samples_per_task=2000, progress=False)
    assert os.listdir(out) == []


VSIMEM = (r"/vsimem/\S+ is in GDAL's in-memory filesystem .* only this process can read.* write the raster to a file "
          r"or object store .* engine='local'")


@pytest.fixture
def in_memory():
    """A georeferenced raster in a rasterio MemoryFile (its name is a /vsimem/ path), open while the test runs."""
    from rasterio.io import MemoryFile
    from rasterio.transform import from_origin

    img = np.random.default_rng(2).normal(size=(1, 40, 56)).astype("float32")
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=56, height=40, count=1, dtype="float32", crs="EPSG:32633",
                      transform=from_origin(500000, 4600000, 10, 10)) as dst:
            dst.write(img)
        with mem.open() as ds:
            yield ds


def vsimem_model(tmp_path):
    return Model.from_onnx(mean_conv(tmp_path / "m.onnx", 1, 3), input_tile_size=16, input_overlap_size=1,
                           output_bands={"mean": "float32"})


def test_a_vsimem_input_is_refused_up_front_when_workers_are_other_processes(tmp_path, raster, client, in_memory):
    """Each worker process would fail with "input raster not found": the client says why before any task runs."""
    from tilecast.export import export_samples

    assert in_memory.name.startswith("/vsimem/")
    model = vsimem_model(tmp_path)
    for image in (in_memory, in_memory.name, [in_memory.name]):  # a dataset, its path, a mosaic member
        pred = model.predict_image(image)
        with pytest.raises(tilecast.SpecError, match=VSIMEM):
            pred.to_geotiff(tmp_path / "out.tif", engine="dask", client=client, chunk_size=16)
    with pytest.raises(tilecast.SpecError, match=VSIMEM):  # the lazy array, for the current (process) client
        model.predict_image(in_memory).to_xarray(engine="dask")
    labels = raster(np.ones((40, 56), "uint8"), name="labels.tif")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(tilecast.SpecError, match=VSIMEM):
        export_samples(in_memory, out / "s.csv", label_raster=labels, engine="dask", client=client, progress=False)
    assert os.listdir(out) == []
    assert sorted(os.listdir(tmp_path)) == ["labels.tif", "m.onnx", "out"]  # no partial prediction


def test_a_vsimem_input_runs_on_workers_in_this_process(tmp_path, raster, in_memory):
    """A LocalCluster(processes=False) shares this process's /vsimem/: the same output as the local runner."""
    distributed = pytest.importorskip("distributed")
    from tilecast.export import export_samples

    pred = vsimem_model(tmp_path).predict_image(in_memory)
    local = pred.to_geotiff(tmp_path / "local.tif")
    labels = raster(np.ones((40, 56), "uint8"), name="labels.tif")
    ref = export_samples(in_memory, tmp_path / "ref.csv", label_raster=labels, progress=False)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        out = pred.to_geotiff(tmp_path / "dask.tif", engine="dask", client=c, chunk_size=16)
        dask = export_samples(in_memory, tmp_path / "dask.csv", label_raster=labels, engine="dask", client=c,
                              samples_per_task=500, progress=False)
    import rasterio

    with rasterio.open(out) as a, rasterio.open(local) as b:
        assert a.read().tobytes() == b.read().tobytes()
    assert dask.files["all"][0].read_text() == ref.files["all"][0].read_text()


def _hold_the_gil(seconds: float) -> str:
    """A worker stuck the way the CPython 3.11 profiler deadlock leaves one: the GIL held in C, so its event loop
    sends no heartbeat (ctypes.PyDLL calls C without releasing the GIL)."""
    import ctypes

    ctypes.PyDLL(None).sleep(int(seconds))
    return "woke"


def _sleep(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "slept"


@pytest.mark.timeout(90)
def test_a_stuck_worker_stops_the_run_with_an_error_naming_it():
    import time

    distributed = pytest.importorskip("distributed")
    from tilecast.runners.dask_tasks import local_cluster, run_tasks

    with local_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                       silence_logs=50) as cluster, distributed.Client(cluster) as c:
        got: list[str] = []
        # A long task that lets its worker heartbeat is not mistaken for a stuck one.
        run_tasks(c, lambda i, a: c.submit(_sleep, 4, pure=False), [0], got.append, silence_limit=2)
        assert got == ["slept"]
        t0 = time.monotonic()
        with pytest.raises(tilecast.TilecastError, match=r"Dask worker tcp://\S+ has not answered the scheduler for "
                                                          r"\d+ s while running _hold_the_gil-.*restart the worker"):
            run_tasks(c, lambda i, a: c.submit(_hold_the_gil, 9, pure=False), [0], got.append, silence_limit=2)
        assert time.monotonic() - t0 < 7 and got == ["slept"]  # not the 9 s the worker is stuck for


def test_the_silence_limit_is_the_worker_ttl_after_which_dask_counts_a_worker_dead():
    dask = pytest.importorskip("dask")
    from tilecast.runners.dask_tasks import worker_silence_limit

    with dask.config.set({"distributed.scheduler.worker-ttl": "90s"}):
        assert worker_silence_limit() == 90
    with dask.config.set({"distributed.scheduler.worker-ttl": None}):  # switched off: no limit either
        assert worker_silence_limit() is None
    assert worker_silence_limit() == 300  # Dask's default, 5 minutes
