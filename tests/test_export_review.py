"""Review of the export/import area: the cases the per-feature test files did not cover."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import xy as pixel_xy

from conftest import coord_image, write_raster
from tilecast.cli import main
from tilecast.errors import InputError
from tilecast.export import export_image, export_samples, import_predictions
from tilecast.export.tfrecord import ShardedWriter, example_bytes
from tilecast.training import TFRecordDataset

gpd = pytest.importorskip("geopandas")


@pytest.fixture
def labelled(tmp_path):
    src = write_raster(tmp_path / "scene.tif", coord_image(20, 30, 3))
    with rasterio.open(src) as ds:
        xs, ys = pixel_xy(ds.transform, [1, 2], [3, 4])
        gdf = gpd.GeoDataFrame({"cls": [1, 2], "x": [7.0, 8.0]}, geometry=gpd.points_from_xy(xs, ys), crs=ds.crs)
    return src, gdf


@pytest.mark.parametrize("kw", [
    {"properties": ["cls"]},  # the label again: a 2-value feature under a [1] spec
    {"properties": ["x"], "geometries": True},  # the property 'x' silently replaced by the pixel centre's x
    {"properties": ["x", "x"]},
])
def test_feature_names_must_be_unique(labelled, tmp_path, kw):
    src, gdf = labelled
    with pytest.raises(InputError, match="more than once"):
        export_samples(src, tmp_path / "s.tfrecord", labels=gdf, label_field="cls", **kw)
    assert not list(tmp_path.glob("s*.tfrecord*"))


def test_import_takes_file_and_folder_names_with_glob_characters(tmp_path):
    """A literal path (file or folder) whose name holds ``[`` is not a glob pattern: it was reported as 'no TFRecord
    files' (the pattern matched nothing)."""
    img = coord_image(16, 24, 2)
    src = write_raster(tmp_path / "src.tif", img)
    res = export_image(src, tmp_path / "tiles", 8)
    run = tmp_path / "run[1]"
    run.mkdir()
    with ShardedWriter(run, "pred", compressed=False, single_name="pred.tfrecord") as w:
        for ex in TFRecordDataset(res.spec):
            w.write(example_bytes(ex))
        w.close()
    for given in (run / "pred.tfrecord", run):
        out = import_predictions(given, res.mixer, tmp_path / "back.tif", overwrite=True)
        with rasterio.open(out) as back:
            np.testing.assert_array_equal(back.read(), img)


@pytest.mark.parametrize("size", ["1.2.3MB", ".", "1e3"])
def test_a_malformed_max_file_size_is_a_usage_error(tmp_path, size):
    """``--max-file-size 1.2.3MB`` passed the pattern and crashed with a bare ValueError traceback."""
    r = CliRunner().invoke(main, ["export", "image", str(tmp_path / "x.tif"), "--patch", "8",
                                  "--max-file-size", size, "-o", str(tmp_path / "out")])
    assert r.exit_code == 2 and "is not a size" in r.output, r.output
