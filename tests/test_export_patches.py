"""Patch exports (``neighborhoodToArray``): TensorFlow parses them and each patch equals a boundless rasterio read
filled with the default value; patch windows at edges, splits and shard boundaries are property-tested."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.transform import xy as pixel_xy
from rasterio.windows import Window

from conftest import coord_image, write_raster
from tilecast.export import export_patches
from tilecast.export.reading import read_at
from tilecast.export.sampling import Samples, assign_splits
from tilecast.export.tfrecord import ShardedWriter, decode_example, example_bytes, iter_records
from tilecast.plan import XY
from tilecast.sources.base import Grid
from tilecast.training import load_spec, tf_parser_spec

gpd = pytest.importorskip("geopandas")


class ArraySource:
    """A numpy-backed source (same contract as the core sources), for fast property tests."""

    def __init__(self, data: np.ndarray, valid: np.ndarray | None = None) -> None:
        self.data, self.valid = data, valid
        self.grid = Grid(CRS.from_epsg(32633), Affine.identity(), data.shape[1:])
        self.band_names = [f"b{i + 1}" for i in range(data.shape[0])]
        self.dtype = data.dtype
        self.properties: dict = {}
        self.reads = 0

    def read(self, window: Window):
        self.reads += 1
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        v = None if self.valid is None else self.valid[r : r + h, c : c + w]
        return self.data[:, r : r + h, c : c + w], v

    def close(self) -> None:
        pass


def expected_patch(data, valid, r, c, ph, pw, fill):
    """Reference: pad the whole raster with the fill, then slice; the sample pixel sits at (ph // 2, pw // 2)."""
    d = np.where(valid[None], data, fill) if valid is not None else data
    padded = np.pad(d, ((0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    r0, c0 = r - ph // 2 + ph, c - pw // 2 + pw
    return padded[:, r0 : r0 + ph, c0 : c0 + pw]


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 40), w=st.integers(1, 40), ph=st.integers(1, 9), pw=st.integers(1, 9),
    n=st.integers(1, 30), chunk=st.sampled_from([4, 7, 16, 512]), seed=st.integers(0, 1000),
    masked=st.booleans(),
)
def test_patch_windows_at_edges_match_padded_reference(h, w, ph, pw, n, chunk, seed, masked):
    if ph > h or pw > w:
        return
    rng = np.random.default_rng(seed)
    data = rng.integers(-50, 50, (2, h, w)).astype(np.int16)
    valid = rng.random((h, w)) > 0.2 if masked else None
    rows, cols = rng.integers(0, h, n), rng.integers(0, w, n)
    src = ArraySource(data, valid)
    seen = np.zeros(n, int)
    for batch in read_at(src, rows, cols, XY(pw, ph), default_value=-7.9, chunk=chunk, max_batch=5):
        for j, i in enumerate(batch.index):
            # int16 band: default -7.9 truncates to -7 (Earth Engine drops the fractional part)
            ref = expected_patch(data, valid, rows[i], cols[i], ph, pw, -7)
            np.testing.assert_array_equal(batch.values[j], ref)
            seen[i] += 1
    assert (seen == 1).all()
    assert src.reads <= len({(r // chunk, c // chunk) for r, c in zip(rows, cols, strict=True)})


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=0, max_size=40),
    limit=st.integers(20, 1500), compressed=st.booleans(),
)
def test_shards_respect_size_limit_and_keep_order(tmp_path_factory, sizes, limit, compressed):
    d = tmp_path_factory.mktemp("shards")
    w = ShardedWriter(d, "p", compressed=compressed, max_file_size=limit)
    for i, s in enumerate(sizes):
        w.write(example_bytes({"i": np.array([i], np.int64), "pad": np.zeros(s, np.float32)}))
    files = w.close()
    assert [f.name for f in files] == sorted(f.name for f in files)
    got = [int(decode_example(r)["i"][0]) for f in files for r in iter_records(f)]
    assert got == list(range(len(sizes)))
    for f, count in zip(files, w.counts, strict=True):
        framed = sum(len(r) + 16 for r in iter_records(f))
        assert framed <= limit or count == 1  # a single oversized record gets a shard of its own


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), block=st.integers(4, 40), p=st.integers(1, 4), seed=st.integers(0, 99),
       stratify=st.booleans())
def test_blocked_splits_never_share_pixels(n, block, p, seed, stratify):
    rng = np.random.default_rng(seed)
    s = Samples(rng.integers(0, 120, n), rng.integers(0, 120, n), rng.integers(1, 4, n).astype(float))
    out = assign_splits(s, {"train": 0.6, "test": 0.4}, block, seed, XY(p, p), stratify)
    again = assign_splits(s, {"train": 0.6, "test": 0.4}, block, seed, XY(p, p), stratify)
    assert np.array_equal(out.split, again.split)
    owner: dict = {}
    for r, c, sp in zip(out.rows, out.cols, out.split, strict=True):
        for rr in range(r - p // 2, r - p // 2 + p):
            for cc in range(c - p // 2, c - p // 2 + p):
                assert owner.setdefault((rr, cc), sp) == sp


def test_patch_export_parses_with_tensorflow(tmp_path):
    tf = pytest.importorskip("tensorflow")
    img = coord_image(50, 70, 3)
    valid = np.ones((50, 70), bool)
    valid[10, 10] = False
    img[:, ~valid] = -9
    src = write_raster(tmp_path / "img.tif", img, nodata=-9)
    rc = [(0, 0), (49, 69), (10, 11), (25, 35), (48, 2)]
    with rasterio.open(src) as ds:
        xs, ys = pixel_xy(ds.transform, [r for r, _ in rc], [c for _, c in rc])
        gdf = gpd.GeoDataFrame({"cls": [1, 2, 3, 4, 5]}, geometry=gpd.points_from_xy(xs, ys), crs=ds.crs)
    (tmp_path / "out").mkdir()
    res = export_patches(src, tmp_path / "out", [7, 5], labels=gdf, label_field="cls", default_value=-1,
                         max_file_size=2000)
    assert len(res.files["all"]) > 1 and res.count == 5
    spec = load_spec(res.spec)
    assert spec["features"]["b1"]["shape"] == [5, 7]
    ds = tf.data.TFRecordDataset(spec["files"]["all"], compression_type="GZIP")
    parsed = [tf.io.parse_single_example(r, tf_parser_spec(spec)) for r in ds]
    assert len(parsed) == 5
    with rasterio.open(src) as raster:
        padded = np.pad(raster.read(masked=True).filled(-1), ((0, 0), (2, 2), (3, 3)), constant_values=-1)
    for ex in parsed:
        r, c = (int(v) for v in (ex["b1"].numpy()[2, 3], ex["b2"].numpy()[2, 3]))
        ref = padded[:, r : r + 5, c : c + 7]  # the 7 x 5 window centred on (r, c), outside = default
        np.testing.assert_array_equal(np.stack([ex[b].numpy() for b in ("b1", "b2", "b3")]), ref)
        assert rc.index((r, c)) + 1 == ex["cls"].numpy()[0]


def test_stratified_splits_follow_the_fractions_per_class():
    rng = np.random.default_rng(5)
    # Three clustered classes in 64 blocks: a random draw of blocks would split them unevenly.
    centres = {1: (20, 20), 2: (100, 30), 3: (60, 110)}
    rows, cols, labels = [], [], []
    for k, (r, c) in centres.items():
        rows.append(rng.integers(r - 18, r + 18, 400))
        cols.append(rng.integers(c - 18, c + 18, 400))
        labels.append(np.full(400, float(k)))
    s = Samples(np.concatenate(rows), np.concatenate(cols), np.concatenate(labels))
    out = assign_splits(s, {"train": 0.7, "test": 0.3}, 8, 0, XY(1, 1), stratify=True)
    for k in centres:
        frac = np.mean(out.split[out.label == k] == "test")
        assert 0.2 < frac < 0.4


def _points(src, rc):
    with rasterio.open(src) as ds:
        xs, ys = pixel_xy(ds.transform, [r for r, _ in rc], [c for _, c in rc])
        return gpd.GeoDataFrame({"cls": list(range(1, len(rc) + 1))}, geometry=gpd.points_from_xy(xs, ys),
                                crs=ds.crs)


def test_patches_into_a_missing_folder_and_empty_splits_warn(tmp_path):
    """The docs' call: a folder that does not exist yet, and splits on a raster of one default (256 px) block,
    which puts every sample in one split: that must say so, and why, rather than write ``val: 0``."""
    from tilecast.errors import TilecastWarning

    src = write_raster(tmp_path / "img.tif", coord_image(60, 80, 2))
    gdf = _points(src, [(r, c) for r in range(5, 55, 10) for c in range(5, 75, 10)])
    with pytest.warns(TilecastWarning, match=r"'(val|test)'.*256 x 256-pixel blocks.*--split-block"):
        res = export_patches(src, f"{tmp_path}/new/out/", 3, labels=gdf, label_field="cls",
                             splits={"train": 0.6, "val": 0.2, "test": 0.2})
    assert (tmp_path / "new" / "out").is_dir() and sum(res.counts.values()) == res.count == 35
    assert sorted(k for k, v in res.counts.items() if v == 0)  # the case the warning is about
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", TilecastWarning)  # small blocks: every split gets samples, no warning
        res = export_patches(src, tmp_path / "small", 3, labels=gdf, label_field="cls", split_block=10, seed=1,
                             splits={"train": 0.5, "test": 0.5})
    assert all(v > 0 for v in res.counts.values())
