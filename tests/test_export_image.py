"""Image exports (Export.image TFRecord): layout, kernel margins, edge patches dropped, mixer keys, collapseBands,
tensorDepths, sequenceData and maskedThreshold, checked with TensorFlow's parser against rasterio reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from conftest import coord_image, write_raster
from tilecast.errors import OutputError, OutputExistsError, RegionError, SpecError
from tilecast.export import ImageExportOptions, export_image
from tilecast.export.image import margin_of, truncated_region
from tilecast.plan import XY, TileGeometry, TilePlan
from tilecast.training import TFRecordDataset, load_spec, tf_parser_spec

tf = pytest.importorskip("tensorflow")


def parse(spec_path):
    spec = load_spec(spec_path)
    ds = tf.data.TFRecordDataset(spec["files"]["all"], compression_type=spec["compression"])
    p = tf_parser_spec(spec)
    if spec["kind"] == "sequence_example":
        return [tuple({k: v.numpy() for k, v in part.items()} for part in tf.io.parse_single_sequence_example(r, *p))
                for r in ds]
    return [{k: v.numpy() for k, v in tf.io.parse_single_example(r, p).items()} for r in ds]


def padded_reference(src, pad_y, pad_x, fill):
    with rasterio.open(src) as ds:
        data = ds.read(masked=True).filled(fill).astype(np.float32)
    return np.pad(data, ((0, 0), (pad_y, pad_y), (pad_x, pad_x)), constant_values=fill)


@pytest.fixture
def scene(tmp_path):
    return write_raster(tmp_path / "scene.tif", coord_image(70, 100, 3))


def test_patches_with_kernel_match_rasterio_and_edge_patches_are_dropped(scene, tmp_path):
    out = tmp_path / "tiles"
    out.mkdir()
    res = export_image(scene, out, [32, 16], kernel=[8, 4], max_file_size=30_000, default_value=-5)
    assert res.count == 12 and len(res.files["all"]) > 1  # 100 x 70 -> 3 x 4 whole patches, sharded
    mixer = json.loads(res.mixer.read_text())
    assert set(mixer) == {"projection", "patchDimensions", "patchesPerRow", "totalPatches"}
    assert set(mixer["projection"]) == {"crs", "affine"} and list(mixer["projection"]["affine"]) == ["doubleMatrix"]
    with rasterio.open(scene) as ds:
        assert mixer["projection"]["affine"]["doubleMatrix"] == list(ds.transform)[:6]
        assert mixer["projection"]["crs"] == "EPSG:32633"
    assert (mixer["patchDimensions"], mixer["patchesPerRow"], mixer["totalPatches"]) == ([32, 16], 3, 12)
    ref = padded_reference(scene, 2, 4, -5)
    got = parse(res.spec)
    assert len(got) == 12
    for k, ex in enumerate(got):  # row-major across the lexicographically sorted shards
        r, c = divmod(k, 3)
        expected = ref[:, r * 16 : r * 16 + 20, c * 32 : c * 32 + 40]
        np.testing.assert_array_equal(np.stack([ex["b1"], ex["b2"], ex["b3"]]), expected)
    with pytest.raises(OutputExistsError):
        export_image(scene, out, [32, 16], kernel=[8, 4])


def test_region_offsets_the_mixer(scene, tmp_path):
    with rasterio.open(scene) as ds:
        t = ds.transform
    left, top = t * (10, 20)
    right, bottom = t * (60, 50)
    res = export_image(scene, tmp_path, 25, bounds=(left, bottom, right, top))
    mixer = json.loads(res.mixer.read_text())
    assert mixer["projection"]["affine"]["doubleMatrix"] == [t.a, 0.0, left, 0.0, t.e, top]
    assert (mixer["patchesPerRow"], mixer["totalPatches"]) == (2, 2)
    first = parse(res.spec)[0]
    assert first["b1"][0, 0] == 20 and first["b2"][0, 0] == 10


def test_collapse_bands_and_tensor_depths(scene, tmp_path):
    ref = padded_reference(scene, 1, 1, 0)
    res = export_image(scene, tmp_path, 20, kernel=2, collapse_bands=True, prefix="c")
    got = parse(res.spec)
    assert list(got[0]) == ["b1"] and got[0]["b1"].shape == (22, 22, 3)
    np.testing.assert_array_equal(got[1]["b1"], np.moveaxis(ref[:, 0:22, 20:42], 0, -1))
    # An array band of two raster bands, padded to depth 3 with the default value; another truncated to depth 1.
    res = export_image(scene, tmp_path, 20, prefix="a", default_value=9, arrays={"arr": ["b2", "b3"], "one": ["b1"]},
                       tensor_depths={"arr": 3, "one": 1})
    spec = load_spec(res.spec)
    assert spec["features"] == {"one": {"shape": [20, 20, 1], "dtype": "float32"},
                                "arr": {"shape": [20, 20, 3], "dtype": "float32"}}
    ex = parse(res.spec)[0]
    np.testing.assert_array_equal(ex["arr"][..., :2], np.moveaxis(ref[1:, 1:21, 1:21], 0, -1))
    assert (ex["arr"][..., 2] == 9).all()
    np.testing.assert_array_equal(ex["one"][..., 0], ref[0, 1:21, 1:21])
    # tensorDepths and collapseBands together: scalar bands count 1, arrays their depth.
    res = export_image(scene, tmp_path, 20, prefix="ac", arrays={"arr": ["b2", "b3"]}, tensor_depths={"arr": 2},
                       collapse_bands=True)
    ex = parse(res.spec)[0]
    np.testing.assert_array_equal(ex["b1"], np.moveaxis(ref[:, 1:21, 1:21], 0, -1))


def test_sequence_data(tmp_path):
    src = write_raster(tmp_path / "s.tif", coord_image(8, 8, 3))
    res = export_image(src, tmp_path, 4, kernel=2, sequence_data=True, arrays={"arr": ["b2", "b3"]},
                       tensor_depths={"arr": 2})
    got = parse(res.spec)
    assert len(got) == 4 * 36  # one SequenceExample per pixel of each 6 x 6 buffered patch
    ref = padded_reference(src, 1, 1, 0)
    for i in (0, 7, 35, 36 + 8, 3 * 36 + 20):
        k, p = divmod(i, 36)
        pr, pc = divmod(p, 6)
        r, c = (k // 2) * 4 + pr, (k % 2) * 4 + pc
        ctx, seq = got[i]
        assert ctx["b1"] == ref[0, r, c]
        np.testing.assert_array_equal(seq["arr"], ref[1:, r, c])
    # The numpy reader agrees with TensorFlow.
    items = list(TFRecordDataset(res.spec))
    np.testing.assert_array_equal(items[44]["arr"], got[44][1]["arr"])


def test_masked_threshold_drops_patches_and_suppresses_the_mixer(tmp_path):
    img = coord_image(40, 40, 1)
    img[0, :20, :20] = -1  # the first patch fully masked
    img[0, 20:25, 20:40] = -1  # a quarter of the last row of patches
    src = write_raster(tmp_path / "m.tif", img, nodata=-1)
    res = export_image(src, tmp_path, 20, masked_threshold=0.5)
    assert res.mixer is None and not list(tmp_path.glob("*mixer.json")) and res.count == 3 and res.skipped == 1
    res = export_image(src, tmp_path, 20, prefix="all")
    assert res.mixer is not None and res.count == 4
    assert (parse(res.spec)[0]["b1"] == 0).all()  # masked pixels take the default value


@settings(max_examples=80, deadline=None)
@given(h=st.integers(1, 60), w=st.integers(1, 60), px=st.integers(1, 20), py=st.integers(1, 20),
       kx=st.sampled_from([1, 2, 4, 10]), ky=st.sampled_from([1, 2, 6]),
       r0=st.integers(0, 10), c0=st.integers(0, 10))
def test_patch_grid_and_kernel_margins(h, w, px, py, kx, ky, r0, c0):
    """Each exported patch is the unbuffered patch grow by kernel/2 per side (0 for a 1-pixel kernel), inside or
    outside the raster; only whole patches of the region are exported."""
    region = Window(min(c0, w - 1), min(r0, h - 1), w - min(c0, w - 1), h - min(r0, h - 1))
    if px > region.width or py > region.height:
        with pytest.raises(RegionError):
            truncated_region(region, XY(px, py))
        return
    cut = truncated_region(region, XY(px, py))
    m = margin_of(XY(kx, ky))
    plan = TilePlan.create((h, w), TileGeometry.create([px, py], m, overlap_mode="total"), cut)
    assert len(plan) == (region.width // px) * (region.height // py)
    for t in plan.tiles():
        top = region.row_off + t.row * py - m.y // 2
        left = region.col_off + t.col * px - m.x // 2
        (pt, pb), (pl, pr) = t.pad
        assert (t.read.row_off - pt, t.read.col_off - pl) == (top, left)
        assert (t.read.height + pt + pb, t.read.width + pl + pr) == (py + m.y, px + m.x)


def test_options_are_validated(scene, tmp_path):
    with pytest.raises(SpecError, match="Unknown file format options"):
        ImageExportOptions.from_format_options({"patchDimensions": [8, 8], "kernelSiz": 2})
    opts = ImageExportOptions.from_format_options({"tfrecordPatchDimensions": 8, "kernelSize": [4, 2],
                                                   "maxFileSize": 100})
    assert opts.patch_dimensions == (8, 8) and opts.kernel_size == (4, 2) and opts.max_file_size == 100
    with pytest.raises(SpecError, match="must be even"):
        export_image(scene, tmp_path, 8, kernel=3)
    with pytest.raises(SpecError, match="must be a dict"):
        export_image(scene, tmp_path, 8, tensor_depths=[3])
    with pytest.raises(SpecError, match="tensorDepths is required"):
        export_image(scene, tmp_path, 8, arrays={"a": ["b1"]})
    with pytest.raises(RegionError, match="larger than the region"):
        export_image(scene, tmp_path, [101, 8])
    assert [p.name for p in tmp_path.iterdir()] == ["scene.tif"]  # nothing left behind


def test_a_missing_output_folder_is_created(scene, tmp_path):
    """As the command line does: ``export_image`` into ``a/b`` creates both (docs examples call it that way)."""
    res = export_image(scene, tmp_path / "a" / "b", 10)
    assert res.count == 70 and all(f.parent == tmp_path / "a" / "b" for f in res.files["all"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        export_image(scene, tmp_path / "file", 10)
