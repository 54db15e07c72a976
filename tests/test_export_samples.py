"""Table exports (band values at labelled pixels): TensorFlow parses them with the generated spec and the values
equal the raster read with rasterio; sampling is seeded; bad labels give clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import xy as pixel_xy

from conftest import coord_image, write_raster
from tilecast.errors import InputError, OutputExistsError, RegionError, TilecastWarning
from tilecast.export import export_samples
from tilecast.training import TFRecordDataset, load_spec, tf_parser_spec

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")


def tf_parse(spec_path, split="all"):
    tf = pytest.importorskip("tensorflow")
    spec = load_spec(spec_path)
    ds = tf.data.TFRecordDataset(spec["files"][split], compression_type=spec["compression"])
    parser = tf_parser_spec(spec)
    rows = [{k: v.numpy() for k, v in tf.io.parse_single_example(r, parser).items()} for r in ds]
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]} if rows else {}


@pytest.fixture
def scene(tmp_path):
    img = coord_image(60, 80, 3)
    return write_raster(tmp_path / "scene.tif", img), img


def points(src, rc, labels, crs=None):
    with rasterio.open(src) as ds:
        xs, ys = pixel_xy(ds.transform, [r for r, _ in rc], [c for _, c in rc])
        gdf = gpd.GeoDataFrame({"cls": labels, "w": np.arange(len(rc)) * 2.0},
                               geometry=gpd.points_from_xy(xs, ys), crs=ds.crs)
    return gdf.to_crs(crs) if crs else gdf


def test_table_export_parses_with_tensorflow_and_matches_rasterio(scene, tmp_path):
    src, _img = scene
    rc = [(0, 0), (59, 79), (10, 20), (33, 7), (10, 21)]
    res = export_samples(src, tmp_path / "s.tfrecord.gz", labels=points(src, rc, [1, 2, 1, 3, 2]),
                         label_field="cls", properties=["w"])
    assert res.count == 5 and res.files["all"] == [tmp_path / "s.tfrecord.gz"]
    got = tf_parse(res.spec)
    assert set(got) == {"b1", "b2", "b3", "cls", "w"}
    with rasterio.open(src) as ds:
        ref = ds.read()
    # Samples come out chunk by chunk; match them by their coordinates (band 1 = row, band 2 = col).
    seen = {(int(r), int(c)): i for i, (r, c) in enumerate(zip(got["b1"][:, 0], got["b2"][:, 0], strict=True))}
    assert set(seen) == set(rc)
    for (r, c), lab in zip(rc, [1, 2, 1, 3, 2], strict=True):
        i = seen[(r, c)]
        np.testing.assert_array_equal([got[b][i, 0] for b in ("b1", "b2", "b3")], ref[:, r, c])
        assert got["cls"][i, 0] == lab
    assert got["w"].dtype == np.float32


def test_labels_in_another_crs_are_reprojected(scene, tmp_path):
    src, _ = scene
    rc = [(5, 5), (40, 70)]
    res = export_samples(src, tmp_path / "s.tfrecord.gz", labels=points(src, rc, [1, 2], crs="EPSG:4326"),
                         label_field="cls")
    got = tf_parse(res.spec)
    assert sorted(zip(got["b1"][:, 0], got["b2"][:, 0], strict=True)) == [(5, 5), (40, 70)]


def test_polygons_every_pixel_and_stratified_seeded(scene, tmp_path):
    src, _ = scene
    with rasterio.open(src) as ds:
        t, crs = ds.transform, ds.crs
    box = shapely.geometry.box
    x0, y0 = t * (0, 0)
    polys = gpd.GeoDataFrame({"cls": [1, 2]}, geometry=[
        box(x0, y0 - 100, x0 + 100, y0),           # rows 0-9, cols 0-9: 100 pixels
        box(x0 + 300, y0 - 500, x0 + 500, y0 - 300),  # rows 30-49, cols 30-49: 400 pixels
    ], crs=crs)
    full = export_samples(src, tmp_path / "all.tfrecord.gz", labels=polys, label_field="cls")
    assert full.count == 500
    a = export_samples(src, tmp_path / "a.csv", labels=polys, label_field="cls", per_class=30, seed=7)
    export_samples(src, tmp_path / "b.csv", labels=polys, label_field="cls", per_class=30, seed=7)
    export_samples(src, tmp_path / "c.csv", labels=polys, label_field="cls", per_class=30, seed=8)
    ta, tb, tc = (np.loadtxt(tmp_path / f"{n}.csv", delimiter=",", skiprows=1) for n in "abc")
    assert ta.shape == (60, 4) and np.array_equal(ta, tb) and not np.array_equal(ta, tc)
    assert np.bincount(ta[:, 3].astype(int)).tolist() == [0, 30, 30]
    capped = export_samples(src, tmp_path / "d.parquet", labels=polys, label_field="cls", per_class={1: 5, 2: 50},
                            n=40, seed=1)
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "d.parquet").to_pandas()
    assert capped.count == 40 and len(table) == 40 and (table["cls"] == 1).sum() <= 5
    assert a.count == 60


def test_label_raster_and_masked_pixels_dropped(tmp_path):
    img = coord_image(30, 30, 2)
    src = write_raster(tmp_path / "img.tif", img.astype("int16"), nodata=-1)
    with rasterio.open(src, "r+") as ds:  # mask one labelled pixel
        data = ds.read()
        data[:, 3, 3] = -1
        ds.write(data)
    lab = np.full((30, 30), 255, "uint8")
    lab[3, 3], lab[5, 6], lab[20, 25] = 1, 2, 3
    lsrc = write_raster(tmp_path / "lab.tif", lab, nodata=255)
    res = export_samples(src, tmp_path / "s.tfrecord.gz", label_raster=lsrc)
    assert res.count == 2 and res.skipped == 1
    got = tf_parse(res.spec)
    assert sorted(zip(got["b1"][:, 0], got["b2"][:, 0], got["label"][:, 0], strict=True)) == [(5, 6, 2), (20, 25, 3)]
    # The numpy reader gives the same records without TensorFlow.
    np.testing.assert_array_equal(TFRecordDataset(res.spec).to_numpy()["label"], got["label"])


def test_bad_labels_give_clear_errors(scene, tmp_path):
    src, _ = scene
    gdf = points(src, [(1, 1), (2, 2)], [1, 2])
    with pytest.raises(InputError, match=r"no field .klass.*fields are"):
        export_samples(src, tmp_path / "s.tfrecord.gz", labels=gdf, label_field="klass")
    outside = gdf.copy()
    outside.geometry = outside.geometry.translate(-1e4, 0)
    with pytest.raises(RegionError, match="all 2 label points lie outside"):
        export_samples(src, tmp_path / "s.tfrecord.gz", labels=outside, label_field="cls")
    mixed = gpd.pd.concat([gdf, outside])
    with pytest.raises(RegionError, match=r"2 of 4 label points lie outside.*drop-outside"):
        export_samples(src, tmp_path / "s.tfrecord.gz", labels=mixed, label_field="cls")
    with pytest.warns(TilecastWarning, match="2 label points outside"):
        ok = export_samples(src, tmp_path / "s.tfrecord.gz", labels=mixed, label_field="cls", drop_outside=True)
    assert ok.count == 2
    with pytest.raises(OutputExistsError, match="overwrite"):
        export_samples(src, tmp_path / "s.tfrecord.gz", labels=gdf, label_field="cls")
    with pytest.raises(InputError, match="selection is empty"), pytest.warns(TilecastWarning, match=r"\[5\]"):
        export_samples(src, tmp_path / "e.tfrecord.gz", labels=gdf, label_field="cls", per_class={5: 3})
    with pytest.raises(InputError, match="larger than the raster"):
        export_samples(src, tmp_path / "p.tfrecord.gz", labels=gdf, label_field="cls", patch=81)
    with pytest.raises(InputError, match="no CRS"):
        export_samples(src, tmp_path / "c.tfrecord.gz", labels=gpd.GeoDataFrame(gdf.drop(columns="geometry"),
                       geometry=list(gdf.geometry)), label_field="cls")
    with pytest.raises(InputError, match="not numbers"):
        export_samples(src, tmp_path / "c.tfrecord.gz", labels=gdf.assign(cls=["a", "b"]), label_field="cls")
    with pytest.raises(InputError, match="no labels given"):
        export_samples(src, tmp_path / "c.tfrecord.gz")
    assert not list(tmp_path.glob(".*tmp"))  # failed exports leave no temporary files


def test_cli_samples(scene, tmp_path):
    from click.testing import CliRunner

    from tilecast.cli import main

    src, _ = scene
    gdf = points(src, [(1, 1), (2, 2), (3, 3)], [1, 2, 2])
    gdf.to_file(tmp_path / "pts.geojson", driver="GeoJSON")
    out = tmp_path / "s.tfrecord.gz"
    r = CliRunner().invoke(main, ["export", "samples", src, "--labels", str(tmp_path / "pts.geojson"),
                                  "--label-field", "cls", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    assert tf_parse(tmp_path / "s.spec.json")["cls"][:, 0].tolist() == [1, 2, 2]
    r = CliRunner().invoke(main, ["export", "samples", src, "--labels", str(tmp_path / "pts.geojson"),
                                  "--label-field", "nope", "-o", str(tmp_path / "x.csv"), "-q"])
    assert r.exit_code == 1 and "no field 'nope'" in r.output and "Traceback" not in r.output
