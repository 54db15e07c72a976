"""Write failures of resumable outputs (a vanished folder, a full disk): one tilecast error that names the output and
the fix, on either engine; the partial output is kept for ``resume=True`` and keeping it never raises."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import sys

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

import tilecast
from resume_helpers import read
from tilecast import Model
from tilecast.errors import OutputError, OutputIsInputError, SourceReadError
from tilecast.runners.recipe import errors_reach_client
from tilecast.sinks import chunked
from tilecast.sinks.base import OutputProfile


def double(x):
    return x * 2


def prediction(raster) -> tilecast.Prediction:
    img = np.random.default_rng(0).normal(size=(1, 64, 64)).astype("float32")
    model = Model.from_callable(double, layout="NCHW", input_tile_size=16, output_bands={"y": "float32"})
    return model.predict_image(raster(img))


def prepared(sink, pred) -> None:
    profile: OutputProfile = pred.job.profile
    sink.prepare(profile, "fingerprint", (16, 16), resume=False)


@pytest.mark.parametrize("name", ["o.tif", "o.zarr"])
def test_a_chunk_write_into_a_vanished_folder_is_an_output_error(tmp_path, raster, name):
    if name.endswith(".zarr"):
        pytest.importorskip("zarr")
    folder = tmp_path / "out"
    folder.mkdir()
    sink = (chunked.ZarrSink if name.endswith(".zarr") else chunked.PartialGeoTIFFSink)(folder / name)
    prepared(sink, prediction(raster))
    writer = sink.writer()
    shutil.rmtree(folder)
    with pytest.raises(OutputError, match=re.escape(name) + ".*resume=True") as info:
        writer.write(Window(0, 0, 16, 16), np.ones((1, 16, 16), "float32"))
    assert info.value.resumable


def test_a_chunk_write_into_a_removed_partial_file_is_an_output_error_not_rasterios_type_error(tmp_path, raster):
    """rasterio raises TypeError for a missing file opened "r+" (its driver lookup); that is a write failure."""
    sink = chunked.PartialGeoTIFFSink(tmp_path / "o.tif")
    prepared(sink, prediction(raster))
    os.remove(sink.partial)
    with pytest.raises(OutputError, match="No such file"):
        sink.writer().write(Window(0, 0, 16, 16), np.ones((1, 16, 16), "float32"))


def test_a_manifest_that_cannot_be_written_is_an_output_error(tmp_path, monkeypatch):
    manifest = chunked.Manifest(tmp_path / ".o.tif.resume.json", "f")
    manifest.add([1], {1: "x"})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunked.Path, "write_text", full_disk)
    with pytest.raises(OutputError, match=r"No space left.*free some space.*resume=True") as info:
        manifest.flush()
    assert getattr(info.value, "resumable", False)


@pytest.mark.parametrize("kind", ["tif", "zarr"])
def test_keeping_the_partial_output_of_a_vanished_folder_never_raises(tmp_path, raster, kind):
    """abort(keep=True) runs while the run's own error is handled: its failure is a note on that error."""
    if kind == "zarr":
        pytest.importorskip("zarr")
    folder = tmp_path / "out"
    folder.mkdir()
    sink = (chunked.PartialGeoTIFFSink if kind == "tif" else chunked.ZarrSink)(folder / f"o.{kind}")
    prepared(sink, prediction(raster))
    shutil.rmtree(folder)
    sink.abort(keep=True)  # nothing being handled: no error, nothing to note it on
    try:
        raise RuntimeError("the run's own error")
    except RuntimeError as exc:
        sink.abort(keep=True)
        assert any("could not keep the partial output" in n for n in getattr(exc, "__notes__", []))


def test_a_full_disk_mid_run_keeps_the_partial_output_to_resume(tmp_path, raster, monkeypatch):
    """A full disk is fixed by freeing space: the finished chunks stay, and resume=True continues the run."""
    pred = prediction(raster)
    expected = read(pred.to_geotiff(tmp_path / "clean.tif"))
    opened = rasterio.open
    writes = []

    def full_after_three(path, mode="r", *a, **k):
        if mode == "r+" and str(path).endswith("partial.tmp.tif"):
            writes.append(path)
            if len(writes) > 3:
                raise rasterio.errors.RasterioIOError(f"{path}: No space left on device")
        return opened(path, mode, *a, **k)

    monkeypatch.setattr(chunked.rasterio, "open", full_after_three)
    out = tmp_path / "o.tif"
    with pytest.raises(OutputError, match="No space left"):
        pred.to_geotiff(out, chunk_size=16, resume=True)
    assert (tmp_path / ".o.tif.partial.tmp.tif").exists() and (tmp_path / ".o.tif.resume.json").exists()
    monkeypatch.setattr(chunked.rasterio, "open", opened)
    assert read(pred.to_geotiff(out, chunk_size=16, resume=True)).tobytes() == expected.tobytes()


def test_a_gdal_error_that_does_not_pickle_reaches_the_client_as_a_tilecast_error(tmp_path):
    """rasterio's errors carry a CPLE error (whose args cannot be set, so it does not unpickle) in their chain; a
    missing file opened "r+" is even a TypeError. A task's GDAL error is sent as OutputError or SourceReadError."""
    missing = str(tmp_path / "gone.tif")
    for writing, expected in ((True, OutputError), (False, SourceReadError)):
        for mode in ("r", "r+"):
            with pytest.raises(expected, match="No such file") as info, errors_reach_client(writing=writing):
                rasterio.open(missing, mode)
            sent = pickle.loads(pickle.dumps(info.value))
            assert type(sent) is expected and "No such file" in str(sent)
            assert getattr(sent, "resumable", False)  # a library's error would have kept the partial output


# --- on Dask ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client():
    """A one-worker cluster; the tests above still run where Distributed is not installed."""
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("cloudpickle").register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        yield c


def test_a_partial_file_removed_mid_run_reaches_the_client_as_an_output_error(tmp_path, raster, client):
    pred = prediction(raster)
    partial = tmp_path / ".o.tif.partial.tmp.tif"

    def remove_partial(done, total, pixels):
        if partial.exists():
            partial.unlink()

    with pytest.raises(OutputError, match=r"o\.tif") as info:
        pred.to_geotiff(tmp_path / "o.tif", engine=tilecast.Dask(client=client), chunk_size=16,
                        progress=remove_partial)
    assert not isinstance(info.value, TypeError)


@pytest.mark.parametrize("sink", ["partial", "plain"])
def test_a_custom_sink_on_dask_that_would_overwrite_the_input_is_refused(tmp_path, raster, client, sink):
    """As on the local engine: overwrite=True never allows publishing over one of the prediction's inputs."""
    pred = prediction(raster)
    source = tmp_path / "in0.tif"
    before = source.read_bytes()
    out = (chunked.PartialGeoTIFFSink if sink == "partial" else chunked.GeoTIFFSink)(source, overwrite=True)
    with pytest.raises(OutputIsInputError):
        pred.run(out, engine=tilecast.Dask(client=client), chunk_size=16)
    assert source.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["in0.tif"]


def test_a_failed_cog_build_keeps_the_finished_chunks_to_resume(tmp_path, raster, monkeypatch):
    """The COG is built from the partial file after the last chunk; a full disk there must not throw the finished
    chunks away: resume=True then only builds the COG."""
    from tilecast.sinks import geotiff

    pred = prediction(raster)
    expected = read(pred.to_geotiff(tmp_path / "clean.tif"))
    build = geotiff.copy_to_cog

    def full_disk(src, dst, options):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(geotiff, "copy_to_cog", full_disk)
    out = tmp_path / "o.tif"
    with pytest.raises(OutputError, match="No space left") as info:
        pred.to_geotiff(out, chunk_size=16, resume=True)
    assert info.value.resumable
    assert (tmp_path / ".o.tif.partial.tmp.tif").exists() and (tmp_path / ".o.tif.resume.json").exists()
    monkeypatch.setattr(geotiff, "copy_to_cog", build)
    computed = []
    monkeypatch.setattr(tilecast.job.Job, "read", lambda self, tile, _read=tilecast.job.Job.read: (
        computed.append(tile), _read(self, tile))[1])
    assert read(pred.to_geotiff(out, chunk_size=16, resume=True)).tobytes() == expected.tobytes()
    assert computed == []  # every chunk was kept: only the COG was built
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o.tif")) == []
