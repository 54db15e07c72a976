"""Sample and patch exports on a 2-worker LocalCluster: TensorFlow decodes the same examples, in the same order, as
the local export (seeded selection, blocked splits, masked centres, geometries); single files are concatenated
parts, max_file_size shards are per task; CSV/Parquet; overwrite across engines; a failed run leaves nothing; a
killed worker is survived; CLI."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import xy as pixel_xy

from conftest import coord_image, write_raster
from tilecast.cli import main
from tilecast.errors import InputError, OutputExistsError, SourceReadError, SpecError
from tilecast.export import export_patches, export_samples
from tilecast.export.dask_samples import task_ranges
from tilecast.training import load_spec, tf_parser_spec

distributed = pytest.importorskip("distributed")
gpd = pytest.importorskip("geopandas")
tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB",
                                  dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, \
            distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("scene")
    img = coord_image(120, 150, 3)
    img[:, 40:50, 60:90] = -1  # masked: centres here are skipped, neighbours take the default value
    src = write_raster(d / "scene.tif", img, nodata=-1)
    rng = np.random.default_rng(3)
    rc = np.stack([rng.integers(0, 120, 400), rng.integers(0, 150, 400)], axis=1)
    with rasterio.open(src) as ds:
        xs, ys = pixel_xy(ds.transform, rc[:, 0], rc[:, 1])
        pts = gpd.GeoDataFrame({"cls": rng.integers(1, 4, 400).astype(float), "w": np.arange(400.0)},
                               geometry=gpd.points_from_xy(xs, ys), crs=ds.crs)
    lab = np.full((120, 150), 255, "uint8")
    lab[5:115:3, 5:145:4] = rng.integers(1, 5, lab[5:115:3, 5:145:4].shape)
    labels = write_raster(d / "labels.tif", lab, nodata=255)
    return src, pts, labels


def parsed(spec_path) -> dict[str, list[dict[str, np.ndarray]]]:
    """Every example of every split, decoded by TensorFlow with the spec's parser, in file-list order."""
    spec = load_spec(spec_path)
    parser = tf_parser_spec(spec)
    out = {}
    for split, files in spec["files"].items():
        ds = tf.data.TFRecordDataset(files, compression_type=spec["compression"])
        out[split] = [{k: v.numpy() for k, v in tf.io.parse_single_example(r, parser).items()} for r in ds]
    return out


def assert_same_examples(a, b) -> None:
    assert a.keys() == b.keys()
    for split in a:
        assert len(a[split]) == len(b[split])
        for x, y in zip(a[split], b[split], strict=True):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k])


def same_spec(a, b) -> None:
    sa, sb = (json.loads(p.read_text()) for p in (a, b))
    assert {k: v for k, v in sa.items() if k != "files"} == {k: v for k, v in sb.items() if k != "files"}


def folder(tmp_path, name):
    out = tmp_path / name
    out.mkdir()
    return out


def test_task_ranges_cut_at_chunk_boundaries():
    keys = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 3])
    assert task_ranges(keys, 4) == [(0, 3), (3, 5), (5, 9), (9, 12)]  # group 2 is larger than a task: cut inside
    assert task_ranges(keys, 100) == [(0, 12)]
    assert task_ranges(np.zeros(0, int), 3) == []
    chunks = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0]])  # (chunk row, chunk col) per sample
    assert task_ranges(chunks, 2) == [(0, 2), (2, 3), (3, 5)]
    with pytest.raises(SpecError, match="samples_per_task"):
        task_ranges(keys, 0)


def test_table_with_splits_is_the_local_export(client, scene, tmp_path):
    src, pts, _ = scene
    kw = dict(labels=pts, label_field="cls", properties=["w"], n=300, seed=4, split_block=32, geometries=True,
              chunk=32, splits={"train": 0.7, "test": 0.3, "val": 0.0})  # val: no records, still a (empty) file
    local = export_samples(src, folder(tmp_path, "l") / "s.tfrecord.gz", **kw)
    dask = export_samples(src, folder(tmp_path, "d") / "s.tfrecord.gz", engine="dask", client=client,
                          samples_per_task=20, **kw)
    assert dask.counts == local.counts and dask.skipped == local.skipped > 0 and local.counts["val"] == 0
    names = {k: [f.name for f in v] for k, v in dask.files.items()}
    assert names == {k: [f"s-{k}.tfrecord.gz"] for k in ("train", "test", "val")}
    assert_same_examples(parsed(dask.spec), parsed(local.spec))
    same_spec(dask.spec, local.spec)
    assert sorted(os.listdir(tmp_path / "d")) == sorted([n for v in names.values() for n in v] + ["s.spec.json"])


def test_patches_sharded_per_task(client, scene, tmp_path):
    src, _, labels = scene
    kw = dict(label_raster=labels, per_class=60, seed=2, default_value=-3, max_file_size=3000, chunk=48)
    local = export_patches(src, folder(tmp_path, "l"), [7, 5], **kw)
    dask = export_patches(src, folder(tmp_path, "d"), [7, 5], engine="dask", client=client, samples_per_task=50,
                          **kw)
    assert dask.count == local.count > 150 and dask.skipped == local.skipped
    names = [f.name for f in dask.files["all"]]
    assert names == sorted(names) and names[0].startswith("patches-00000-00000.")
    assert len({n.rsplit("-", 1)[0] for n in names}) > 2  # several tasks, each sharded by size
    assert all(os.path.getsize(f) > 0 for f in dask.files["all"])
    assert_same_examples(parsed(dask.spec), parsed(local.spec))
    same_spec(dask.spec, local.spec)
    # Without max_file_size a folder holds one shard, as locally: the tasks' parts concatenated.
    kw.pop("max_file_size")
    one = export_patches(src, folder(tmp_path, "one"), 3, engine="dask", client=client, samples_per_task=40, **kw)
    ref = export_patches(src, folder(tmp_path, "ref"), 3, **kw)
    assert [f.name for f in one.files["all"]] == [f.name for f in ref.files["all"]] == ["patches-00000.tfrecord.gz"]
    assert_same_examples(parsed(one.spec), parsed(ref.spec))


def test_csv_parquet_and_plain_tfrecord_tables(client, scene, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    src, pts, _ = scene
    kw = dict(labels=pts, label_field="cls", properties=["w"], chunk=32, splits={"a": 0.5, "b": 0.5}, split_block=40)
    for name in ("t.csv", "t.parquet", "t.tfrecord"):
        local = export_samples(src, folder(tmp_path, f"l{name}") / name, **kw)
        dask = export_samples(src, folder(tmp_path, f"d{name}") / name, engine="dask", client=client,
                              samples_per_task=30, **kw)
        assert dask.counts == local.counts and (dask.spec is None) == (local.spec is None)
        for a, b in zip(local.files.values(), dask.files.values(), strict=True):
            assert a[0].name == b[0].name
            if name.endswith(".tfrecord"):  # uncompressed: the TFRecord frames concatenate
                assert_same_examples(parsed(dask.spec), parsed(local.spec))
            elif name.endswith(".csv"):
                assert a[0].read_text() == b[0].read_text()
            else:
                assert pq.read_table(a[0]).equals(pq.read_table(b[0]))


def test_overwrite_failure_and_bad_options(client, scene, tmp_path):
    src, pts, _ = scene
    kw = dict(labels=pts, label_field="cls", max_file_size=2000)
    out = folder(tmp_path, "out")
    first = export_samples(src, out, engine="dask", client=client, samples_per_task=100, **kw)
    assert len(first.files["all"]) > 1 and first.files["all"][0].name == "samples-00000-00000.tfrecord.gz"
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_samples(src, out, **kw)  # the local export sees the Dask shards
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_samples(src, out, engine="dask", client=client, **kw)
    again = export_samples(src, out, overwrite=True, **kw)  # and replaces them all
    assert sorted(out.glob("*.tfrecord.gz")) == again.files["all"]
    assert_same_examples(parsed(again.spec), parsed(first.spec))
    dask = export_samples(src, out, overwrite=True, engine="dask", client=client, samples_per_task=100, **kw)
    assert sorted(out.glob("*.tfrecord.gz")) == dask.files["all"]
    with pytest.raises(SpecError, match="engine='dask'"):
        export_samples(src, out / "x.csv", labels=pts, label_field="cls", workers=2)
    # A raster whose last blocks are gone: later tasks fail, earlier ones succeed; nothing is left behind.
    cut = write_raster(tmp_path / "cut.tif", coord_image(160, 160, 1))
    with open(cut, "r+b") as f:
        f.truncate(int(os.path.getsize(cut) * 0.8))
    with rasterio.open(cut) as ds:
        xs, ys = pixel_xy(ds.transform, np.arange(0, 160, 4), np.arange(0, 160, 4))
        gdf = gpd.GeoDataFrame({"c": np.ones(40)}, geometry=gpd.points_from_xy(xs, ys), crs=ds.crs)
    failed = folder(tmp_path, "failed")
    with pytest.raises(SourceReadError, match=r"cannot read rows \d+:\d+, cols \d+:\d+ of .*cut\.tif"):
        export_samples(cut, failed / "s.tfrecord.gz", labels=gdf, label_field="c", chunk=16, engine="dask",
                       client=client, samples_per_task=5)
    assert list(failed.iterdir()) == []
    with rasterio.open(src) as ds:
        x, y = pixel_xy(ds.transform, [45], [70])
    masked = gpd.GeoDataFrame({"cls": [1.0]}, geometry=gpd.points_from_xy(x, y), crs=pts.crs)
    with pytest.raises(InputError, match="nothing to write"):  # every centre masked: no Parquet file, as locally
        export_samples(src, failed / "e.parquet", labels=masked, label_field="cls", engine="dask", client=client)
    assert list(failed.iterdir()) == []


def test_cli_engine_dask(client, scene, tmp_path):
    src, pts, _ = scene
    pts.to_file(tmp_path / "pts.geojson", driver="GeoJSON")
    args = ["export", "patches", src, "--labels", str(tmp_path / "pts.geojson"), "--label-field", "cls",
            "--patch", "5", "--seed", "1", "-n", "100", "-q"]
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "cli") + "/", "--engine", "dask",
                                    "--scheduler", client.scheduler.address, "--samples-per-task", "30"])
    assert res.exit_code == 0, res.output
    ref = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "ref") + "/"])
    assert ref.exit_code == 0, ref.output
    assert_same_examples(parsed(tmp_path / "cli" / "spec.json"), parsed(tmp_path / "ref" / "spec.json"))
    res = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "x.tfrecord.gz"), "--workers", "2"])
    assert res.exit_code != 0 and "--engine dask" in res.output


def test_a_killed_worker_does_not_break_the_export(scene, tmp_path):
    """A worker killed mid-export loses its running task, the results it held and the sample parts scattered to it
    (which Dask cannot recompute): those tasks are submitted again and rewrite their records in place, so TF decodes
    exactly the local export's examples. Its own cluster, so the kill cannot disturb the module's."""
    src, pts, labels = scene
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                                  silence_logs=50) as cluster, distributed.Client(cluster) as c:
        for name, export, args, kw in [
            ("s.tfrecord.gz", export_samples, (), dict(labels=pts, label_field="cls", properties=["w"], chunk=32,
                                                       splits={"a": 0.6, "b": 0.4}, split_block=40)),
            ("", export_patches, ([7, 5],), dict(label_raster=labels, per_class=60, seed=2, max_file_size=3000,
                                                 chunk=48)),
        ]:
            killed: list[int] = []
            victim = min(c.run(os.getpid).values())

            def kill_once(done, total, pixels, killed=killed, victim=victim):
                if not killed:  # after the first task's result: the other tasks are queued or running
                    os.kill(victim, signal.SIGKILL)
                    killed.append(victim)

            local = export(src, folder(tmp_path, f"l{name}") / name, *args, **kw)
            out = folder(tmp_path, f"d{name}")
            dask = export(src, out / name, *args, engine="dask", client=c, samples_per_task=10, progress=kill_once,
                          **kw)
            assert killed
            assert dask.counts == local.counts and dask.skipped == local.skipped
            assert_same_examples(parsed(dask.spec), parsed(local.spec))
            assert not [f for f in os.listdir(out) if f.startswith(".")]  # no staging folder left
            c.wait_for_workers(2, timeout=30)
