"""Image export on a 2-worker LocalCluster: the same examples, in the same order across sorted file names, and the
same mixer as the local export; overwrite rules shared with the local export; the CLI's --engine dask."""

from __future__ import annotations

import gc
import json
import os
import sys
import threading

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from conftest import coord_image, write_raster
from tilecast.cli import main
from tilecast.errors import OutputExistsError, SourceReadError, SpecError
from tilecast.export import export_image
from tilecast.export.importer import import_predictions
from tilecast.export.tfrecord import iter_records, messages
from tilecast.runners.dask_tasks import open_client
from tilecast.sources.rasterio_source import RasterioSource

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    img = coord_image(70, 100, 3)
    img[:, 10:30, 40:60] = -1  # masked pixels take the default value
    return write_raster(tmp_path_factory.mktemp("scene") / "scene.tif", img, nodata=-1)


def records(files, kind: str = "Example") -> list[bytes]:
    """Every record, reading the files in lexicographic order of their names (as Earth Engine does), re-serialized
    deterministically: protobuf writes the feature map in an order that varies between processes (hash seeds)."""
    cls = getattr(messages(), kind)
    return [cls.FromString(r).SerializeToString(deterministic=True)
            for f in sorted(files, key=os.path.basename) for r in iter_records(f)]


def folder(tmp_path, name):
    out = tmp_path / name
    out.mkdir()
    return out


def test_dask_export_is_the_local_export(client, scene, tmp_path):
    kw = dict(kernel=[8, 8], max_file_size=20_000, default_value=-5)
    local = export_image(scene, folder(tmp_path, "local"), [16, 8], **kw)
    dask = export_image(scene, folder(tmp_path, "dask"), [16, 8], engine="dask", client=client, chunk_rows=2, **kw)
    assert dask.count == local.count == 48 and dask.skipped == 0
    names = [f.name for f in dask.files["all"]]
    assert names == sorted(names) and len({n.rsplit("-", 1)[0] for n in names}) == 4  # 8 patch rows / 2
    assert len(names) > 4  # maxFileSize shards inside a chunk too
    assert records(dask.files["all"]) == records(local.files["all"])
    assert dask.mixer.read_text() == local.mixer.read_text()
    spec = json.loads(dask.spec.read_text())
    assert spec["files"]["all"] == names and spec["count"] == 48
    assert {k: v for k, v in spec.items() if k != "files"} == {
        k: v for k, v in json.loads(local.spec.read_text()).items() if k != "files"}
    # Earth Engine's round trip: the Dask shards, sorted by name, reassemble onto the mixer's grid.
    imported = [import_predictions(tmp_path / name, res.mixer, tmp_path / f"{name}.tif")
                for name, res in (("local", local), ("dask", dask))]
    with rasterio.open(imported[0]) as a, rasterio.open(imported[1]) as b:
        assert a.shape == (64, 96) and np.array_equal(a.read(), b.read()) and a.transform == b.transform


def test_tensorflow_parses_the_dask_export(client, scene, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from tilecast.training import load_spec, tf_parser_spec

    res = export_image(scene, folder(tmp_path, "out"), 20, kernel=[4, 2], engine="dask", client=client,
                       chunk_rows=1, default_value=-5)
    spec = load_spec(res.spec)
    parser = tf_parser_spec(spec)
    ds = tf.data.TFRecordDataset([str(tmp_path / "out" / f) for f in spec["files"]["all"]],
                                 compression_type=spec["compression"])
    got = [tf.io.parse_single_example(r, parser) for r in ds]
    assert len(got) == 15 and got[0]["b1"].shape == (22, 24)
    with rasterio.open(scene) as ds:  # patch (row 1, col 2): rows 19..41, cols 38..62 of the raster
        ref = ds.read(1, masked=True).filled(-5).astype(np.float32)[19:41, 38:62]
    np.testing.assert_array_equal(got[7]["b1"].numpy(), ref)


def test_masked_threshold_sequence_data_and_uncompressed(client, tmp_path):
    img = coord_image(40, 40, 1)
    img[0, :20, :] = -1  # the first row of patches fully masked: its chunk writes no file
    src = write_raster(tmp_path / "m.tif", img, nodata=-1)
    kw = dict(masked_threshold=0.5, sequence_data=True, compressed=False)
    local = export_image(src, folder(tmp_path, "local"), 10, **kw)
    dask = export_image(src, folder(tmp_path, "dask"), 10, engine="dask", client=client, chunk_rows=1, **kw)
    assert (dask.count, dask.skipped) == (local.count, local.skipped) == (8, 8)  # patches (each 100 records)
    assert dask.mixer is None and all(f.name.endswith(".tfrecord") for f in dask.files["all"])
    assert records(dask.files["all"], "SequenceExample") == records(local.files["all"], "SequenceExample")
    img[0, 20:] = -1  # everything masked: one empty file, like the local export
    src = write_raster(tmp_path / "empty.tif", img, nodata=-1)
    empty = export_image(src, folder(tmp_path, "empty"), 10, engine="dask", client=client, masked_threshold=0.5)
    assert empty.count == 0 and len(empty.files["all"]) == 1 and records(empty.files["all"]) == []


def test_overwrite_between_engines(client, scene, tmp_path):
    out = folder(tmp_path, "out")
    local = export_image(scene, out, 20, prefix="p")
    (out / "p-mixer.json").unlink()
    (out / "p.spec.json").unlink()  # only the shards are left: still an earlier export
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_image(scene, out, 20, prefix="p", engine="dask", client=client)
    dask = export_image(scene, out, 20, prefix="p", engine="dask", client=client, overwrite=True, chunk_rows=1)
    assert sorted(out.glob("*.tfrecord*")) == sorted(dask.files["all"]) and not local.files["all"][0].exists()
    dask_records = records(dask.files["all"])
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_image(scene, out, 20, prefix="p")
    again = export_image(scene, out, 20, prefix="p", overwrite=True)  # the Dask shards go too
    assert sorted(out.glob("*.tfrecord*")) == again.files["all"]
    assert records(again.files["all"]) == dask_records
    with pytest.raises(SpecError, match="engine='dask'"):
        export_image(scene, out, 20, prefix="q", workers=2)


def test_a_failed_chunk_leaves_nothing_behind(client, tmp_path):
    src = write_raster(tmp_path / "cut.tif", coord_image(160, 160, 1))
    with open(src, "r+b") as f:  # the last tiles of the file are gone: later chunks fail, earlier ones succeed
        f.truncate(int(os.path.getsize(src) * 0.8))
    out = folder(tmp_path, "out")
    with pytest.raises(SourceReadError, match=r"cannot read rows \d+:\d+, cols \d+:\d+ of .*cut\.tif"):
        export_image(src, out, 16, engine="dask", client=client, chunk_rows=1)
    assert list(out.iterdir()) == []


def _keep_garbage() -> None:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds goes to gc.garbage instead of being freed


def _garbage_left() -> list[str]:
    """The sources and thread-locals that only the collector would have freed (then frees them)."""
    try:
        gc.collect()
        return sorted(type(o).__name__ for o in gc.garbage if isinstance(o, (RasterioSource, threading.local)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_a_failed_chunk_leaves_no_source_for_the_garbage_collector(client, tmp_path):
    # On CPython 3.11, a collection that frees a threading.local (every open source has one) while Dask's profiler
    # is inside sys._current_frames() stops the worker for good (python/cpython#106883): in one CI run, a worker
    # never answered again after this file's failed chunks. A failed task frees its source in its own thread.
    src = write_raster(tmp_path / "cut.tif", coord_image(160, 160, 1))
    with open(src, "r+b") as f:
        f.truncate(int(os.path.getsize(src) * 0.8))
    client.run(_keep_garbage)
    try:
        with pytest.raises(SourceReadError, match=r"cannot read rows \d+:\d+, cols \d+:\d+ of .*cut\.tif"):
            export_image(src, folder(tmp_path, "out"), 16, engine="dask", client=client, chunk_rows=1)
    finally:
        left = client.run(_garbage_left)
    assert left and all(v == [] for v in left.values()), left


def test_the_clusters_tilecast_starts_cannot_deadlock_in_the_profiler(scene, tmp_path):
    dask = pytest.importorskip("dask")
    with dask.config.set({"distributed.worker.profile.enabled": True}), open_client(workers=1) as c:
        profiled = set(c.run(lambda dask_worker: "profile" in dask_worker.periodic_callbacks).values())
        res = export_image(scene, folder(tmp_path, "out"), 20, engine="dask", client=c)
    assert profiled == {sys.version_info[:2] != (3, 11)}  # CPython 3.11 only
    assert res.count == 15


def test_cli_engine_dask(scene, tmp_path):
    # A cluster of its own (and the --scheduler path): in one CI run a worker of the module's cluster stopped
    # heartbeating after the previous test's failed chunks, and this run waited on it. The cause was CPython 3.11's
    # profiler deadlock, which the tests above now guard against.
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster:
        out = tmp_path / "cli"
        res = CliRunner().invoke(main, ["export", "image", scene, "--patch", "20", "--kernel", "2", "-o", str(out),
                                        "-q", "--engine", "dask", "--scheduler", cluster.scheduler_address,
                                        "--chunk-rows", "1"])
    assert res.exit_code == 0, res.output
    ref = export_image(scene, folder(tmp_path, "ref"), 20, kernel=2)
    got = sorted(out.glob("*.tfrecord.gz"))
    assert len(got) == 3 and records(got) == records(ref.files["all"])
    assert (out / "scene-mixer.json").read_text() == ref.mixer.read_text()
    res = CliRunner().invoke(main, ["export", "image", scene, "--patch", "20", "-o", str(out), "--workers", "2"])
    assert res.exit_code != 0 and "--engine dask" in res.output
