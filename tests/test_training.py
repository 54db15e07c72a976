"""Training readers: the generated tf.data parser spec, and the PyTorch dataset reading the same TFRecords
without TensorFlow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import coord_image, write_raster
from tilecast.errors import InputError
from tilecast.export import export_image, export_samples
from tilecast.training import TFRecordDataset, load_spec, make_spec, parse_record, tf_parser_spec, write_spec


@pytest.fixture
def patches(tmp_path):
    src = write_raster(tmp_path / "img.tif", coord_image(40, 40, 3))
    lab = np.full((40, 40), 0, "uint8")
    lab[::4, ::4] = (np.arange(100).reshape(10, 10) % 3 + 1).astype("uint8")
    lsrc = write_raster(tmp_path / "lab.tif", lab, nodata=0)
    (tmp_path / "out").mkdir()
    return export_samples(src, tmp_path / "out", label_raster=lsrc, patch=5, splits={"train": 0.5, "test": 0.5},
                          split_block=10, seed=3, max_file_size=5000)


def test_tf_parser_spec_from_the_sidecar(patches):
    tf = pytest.importorskip("tensorflow")
    spec = load_spec(patches.spec)
    parser = tf_parser_spec(spec)
    assert parser["b1"] == tf.io.FixedLenFeature([5, 5], tf.float32)
    assert parser["label"] == tf.io.FixedLenFeature([1], tf.float32)
    for split in ("train", "test"):
        ds = tf.data.TFRecordDataset(spec["files"][split], compression_type="GZIP")
        tf_items = [tf.io.parse_single_example(r, parser) for r in ds]
        np_items = list(TFRecordDataset(patches.spec, split=split))
        assert len(tf_items) == len(np_items) == patches.counts[split] > 0
        for a, b in zip(tf_items, np_items, strict=True):
            for k in ("b1", "b2", "b3", "label"):
                np.testing.assert_array_equal(a[k].numpy(), b[k])


def test_torch_dataloader_batches_patches(patches):
    torch = pytest.importorskip("torch")

    def to_tensors(ex):
        x = torch.from_numpy(np.stack([ex["b1"], ex["b2"], ex["b3"]]))
        return x, int(ex["label"][0])

    ds = TFRecordDataset(patches.spec, split="train", transform=to_tensors)
    assert isinstance(ds, torch.utils.data.IterableDataset)
    batches = list(torch.utils.data.DataLoader(ds, batch_size=8))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.shape == (patches.counts["train"], 3, 5, 5) and set(y.tolist()) <= {1, 2, 3}
    # The centre pixel of every patch is the labelled pixel (rows and cols multiples of 4).
    assert (x[:, 0, 2, 2] % 4 == 0).all() and (x[:, 1, 2, 2] % 4 == 0).all()
    with pytest.raises(InputError, match="no split 'val'"):
        TFRecordDataset(patches.spec, split="val")


def test_spec_roundtrip_and_errors(tmp_path):
    spec = make_spec({"a": [2, 3]}, ["x.tfrecord.gz"], compressed=True, note="hi")
    write_spec(tmp_path / "s.spec.json", spec)
    loaded = load_spec(tmp_path / "s.spec.json")
    assert loaded["files"]["all"] == [str(tmp_path / "x.tfrecord.gz")] and loaded["note"] == "hi"
    with pytest.raises(InputError, match="spec file not found"):
        load_spec(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text(json.dumps({"a": 1}))
    with pytest.raises(InputError, match="not a tilecast export spec"):
        load_spec(tmp_path / "bad.json")
    from tilecast.export.tfrecord import example_bytes

    with pytest.raises(InputError, match="has 5 values"):
        parse_record(example_bytes({"a": np.zeros(5)}), spec)


def test_sequence_spec_for_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    src = write_raster(tmp_path / "img.tif", coord_image(4, 4, 2))
    res = export_image(src, tmp_path, 2, sequence_data=True, arrays={"v": ["b1", "b2"]}, tensor_depths={"v": 2})
    ctx, seq = tf_parser_spec(load_spec(res.spec))
    assert ctx == {} and seq == {"v": tf.io.FixedLenSequenceFeature([], tf.float32)}
