"""Round 10 of the export review: defects earlier reviews noticed and left, each reproduced by a test that failed.

Sample coordinates (``geometries``) keep float64 in Parquet/CSV; an upper-case output suffix keeps the user's file
name; ``drop_outside`` with a label raster is refused (it did nothing); progress counts the right unit; a relative
``$TILECAST_DATA_DIR`` is resolved once; patch padding beyond the raster edge counts as masked.
"""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.transform import from_origin
from rasterio.transform import xy as pixel_xy

from conftest import coord_image, write_raster
from tilecast import Dask, datasets
from tilecast.cli import main
from tilecast.errors import InputError, OutputError, TilecastWarning
from tilecast.export import export_image, export_samples, import_predictions
from tilecast.training import TFRecordDataset

gpd = pytest.importorskip("geopandas")
pq = pytest.importorskip("pyarrow.parquet")

RC = [(3, 5), (17, 31), (0, 0), (39, 49)]


def labelled_scene(tmp_path, crs: str, transform: Affine, name: str = "scene.tif"):
    """A 40 x 50 raster whose bands encode row and column, and one labelled point at each centre of ``RC``."""
    src = write_raster(tmp_path / name, coord_image(40, 50, 2), crs=crs, transform=transform)
    xs, ys = pixel_xy(transform, [r for r, _ in RC], [c for _, c in RC])
    labels = gpd.GeoDataFrame({"cls": np.arange(len(RC)) + 1}, geometry=gpd.points_from_xy(xs, ys), crs=crs)
    return src, labels


def expected_centres(transform: Affine, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres in float64, independently of tilecast: rasterio's ``xy``."""
    xs, ys = pixel_xy(transform, rows.astype(int).tolist(), cols.astype(int).tolist())
    return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


@pytest.mark.parametrize(("crs", "transform"), [
    ("EPSG:32633", from_origin(500000.123, 4600000.987, 0.37, 0.37)),  # UTM, centimetres matter
    ("EPSG:4326", from_origin(-122.123456789, 37.987654321, 1e-5, 1e-5)),  # lat/lon, a float32 step is ~1 m
], ids=["utm", "latlon"])
def test_geometries_are_float64_in_parquet_and_csv(tmp_path, crs, transform):
    src, labels = labelled_scene(tmp_path, crs, transform)
    res = export_samples(src, tmp_path / "s.parquet", labels=labels, label_field="cls", geometries=True)
    table = pq.read_table(res.files["all"][0])
    assert str(table.schema.field("x").type) == "double" and str(table.schema.field("y").type) == "double"
    assert str(table.schema.field("b1").type) == "float"  # band values stay float32, as before
    got = table.to_pandas()
    assert got["x"].dtype == np.float64
    xs, ys = expected_centres(transform, got["b1"].to_numpy(), got["b2"].to_numpy())
    np.testing.assert_array_equal(got["x"].to_numpy(), xs)
    np.testing.assert_array_equal(got["y"].to_numpy(), ys)

    res = export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls", geometries=True)
    lines = res.files["all"][0].read_text().splitlines()
    assert lines[0] == "b1,b2,cls,x,y"
    rows = [[float(v) for v in line.split(",")] for line in lines[1:]]
    arr = np.array(rows)
    xs, ys = expected_centres(transform, arr[:, 0], arr[:, 1])
    np.testing.assert_array_equal(arr[:, 3], xs)  # exact: the text round-trips to the same double
    np.testing.assert_array_equal(arr[:, 4], ys)


def test_table_properties_keep_their_values(tmp_path):
    """Properties were float32 in Parquet and CSV: an id past 2**24 was rounded (123456789 to 123456792) and 0.1
    written as 0.100000001. Tables keep them as float64 now (band values stay float32, as before); a TFRecord still
    holds float32, as Earth Engine's does."""
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    labels["w"] = np.array([0.1, 1 / 3, 2.5, 7.0])
    labels["id"] = np.array([123456789, 2**53, 7, 16777217])
    res = export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls", properties=["w", "id"])
    lines = res.files["all"][0].read_text().splitlines()
    by_row = {line.split(",")[0]: line for line in lines[1:]}
    assert by_row["3"] == "3,5,1,0.1,123456789.0"
    assert by_row["17"] == "17,31,2,0.3333333333333333,9007199254740992.0"
    res = export_samples(src, tmp_path / "s.parquet", labels=labels, label_field="cls", properties=["w", "id"])
    got = pq.read_table(res.files["all"][0]).to_pandas().set_index("b1")
    assert str(pq.read_schema(res.files["all"][0]).field("b1").type) == "float"
    assert got.loc[3.0, "id"] == 123456789 and got.loc[39.0, "id"] == 16777217 and got.loc[3.0, "w"] == 0.1
    res = export_samples(src, tmp_path / "s.tfrecord.gz", labels=labels, label_field="cls", properties=["w", "id"])
    rec = TFRecordDataset(res.spec).to_numpy()
    assert rec["id"].dtype == np.float32 and sorted(rec["id"].ravel().tolist()) == sorted(
        np.float32([123456789, 2**53, 7, 16777217]).tolist())


@pytest.mark.parametrize(("name", "fmt"), [("OUT.TFRECORD.GZ", "tfrecord"), ("Out.TfRecord", "tfrecord"),
                                           ("OUT.CSV", "csv"), ("OUT.PARQUET", "parquet")])
def test_upper_case_suffix_keeps_the_name(tmp_path, name, fmt):
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    res = export_samples(src, tmp_path / name, labels=labels, label_field="cls")
    assert res.files["all"] == [tmp_path / name]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith((".tif", ".json"))) == [name]
    data = (tmp_path / name).read_bytes()
    assert (data[:2] == b"\x1f\x8b") == name.endswith("GZ")
    if fmt == "tfrecord":
        assert len(TFRecordDataset(res.spec).to_numpy()["cls"]) == len(RC)
        assert res.spec == tmp_path / (name.split(".")[0] + ".spec.json")


def test_upper_case_suffix_with_splits_and_gz_check(tmp_path):
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    res = export_samples(src, tmp_path / "S.TFRECORD.GZ", labels=labels, label_field="cls",
                         splits={"train": 1, "test": 0}, split_block=8)
    assert res.files["train"] == [tmp_path / "S-train.TFRECORD.GZ"]
    assert gzip.decompress((tmp_path / "S-train.TFRECORD.GZ").read_bytes())  # GZIP, as the name says
    with pytest.raises(OutputError, match="compressed=False"):
        export_samples(src, tmp_path / "T.TFRECORD.GZ", labels=labels, label_field="cls", compressed=False)


def test_drop_outside_with_a_label_raster_is_refused(tmp_path):
    """A label raster is warped to the image grid: its pixels outside the image are never candidates, so the flag
    did nothing; it is refused, in Python and on the command line."""
    src = write_raster(tmp_path / "scene.tif", coord_image(40, 50, 2))
    lab = write_raster(tmp_path / "lab.tif", np.full((40, 25), 2, np.uint8), nodata=0)
    with pytest.raises(InputError, match="drop_outside"):
        export_samples(src, tmp_path / "s.csv", label_raster=lab, drop_outside=True)
    assert not (tmp_path / "s.csv").exists()
    r = CliRunner().invoke(main, ["export", "samples", src, "--label-raster", lab, "--drop-outside", "-o",
                                  str(tmp_path / "c.csv"), "-q"])
    assert r.exit_code != 0 and "--drop-outside" in r.output and "Traceback" not in r.output
    # Without the flag, the label raster covering the left half gives exactly those pixels.
    res = export_samples(src, tmp_path / "s.csv", label_raster=lab)
    assert res.count == 40 * 25


def test_progress_units(tmp_path, capsys):
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls", progress=True)
    res = export_image(src, tmp_path / "tiles", 10, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert any(line.startswith("export samples:") and f"/{len(RC)} samples" in line for line in lines), lines
    assert any(line.startswith("export image:") and "/20 patches" in line for line in lines), lines
    export_samples(src, tmp_path / "p", labels=labels, label_field="cls", patch=3, progress=True)
    assert f"export patches: {len(RC)}/{len(RC)} patches" in capsys.readouterr().err
    import_predictions(res.files["all"], res.mixer, tmp_path / "back.tif", progress=True)
    err = capsys.readouterr().err
    assert "import: 20/20 patches" in err and "tiles" not in err


def test_relative_data_dir_is_resolved_once(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    monkeypatch.setenv(datasets.DATA_DIR_ENV, "fix10-relative-cache")
    first = datasets.data_dir()
    assert first.is_absolute() and first == tmp_path / "a" / "fix10-relative-cache"
    monkeypatch.chdir(tmp_path / "b")
    assert datasets.data_dir() == first  # a later chdir does not move the cache
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path / "abs"))
    assert datasets.data_dir() == tmp_path / "abs"


def test_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """The XDG spec: a relative path in an XDG variable is invalid and ignored."""
    monkeypatch.delenv(datasets.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    assert datasets.data_dir() == datasets.Path.home() / ".cache" / "tilecast" / "datasets"


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address="127.0.0.1:0",
                                  silence_logs=40) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.parametrize("engine", ["local", "dask"])
def test_masked_threshold_counts_padding_beyond_the_edge_as_masked(tmp_path, engine, request):
    """A 40 x 48 raster (no mask), 8 x 8 patches with a 4-pixel kernel: a patch's 12 x 12 block reaches 2 pixels
    past the raster on each edge side it touches; those pixels are masked, as Earth Engine masks pixels outside
    the image."""
    src = write_raster(tmp_path / "s.tif", coord_image(40, 48, 2))
    rows, cols = 40 // 8, 48 // 8
    outside = np.zeros((rows, cols))
    for r in range(rows):
        for c in range(cols):
            top, left = r * 8 - 2, c * 8 - 2
            inside_h = min(top + 12, 40) - max(top, 0)
            inside_w = min(left + 12, 48) - max(left, 0)
            outside[r, c] = 1 - inside_h * inside_w / 144
    kw = {} if engine == "local" else {"engine": Dask(client=request.getfixturevalue("dask_client"))}
    for thr in (0.0, 0.2, 0.3, 0.5):
        res = export_image(src, tmp_path / f"t{thr}", 8, kernel=4, masked_threshold=thr, **kw)
        assert res.count == int((outside <= thr).sum()) and res.skipped == int((outside > thr).sum())
        kept = TFRecordDataset(res.spec).to_numpy()["b1"]
        want = [r * 8 - 2 for r in range(rows) for c in range(cols) if outside[r, c] <= thr]
        # the first row of each kept patch: the raster row it starts at, or the default value 0 above the raster
        np.testing.assert_array_equal(kept[:, 2, 2], np.array(want) + 2)


def test_coordinates_on_dask_match_local(tmp_path, dask_client):
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.123, 4600000.987, 0.37, 0.37))
    local = export_samples(src, tmp_path / "l.parquet", labels=labels, label_field="cls", geometries=True)
    dask = export_samples(src, tmp_path / "d.parquet", labels=labels, label_field="cls", geometries=True,
                          engine=Dask(client=dask_client))
    a, b = pq.read_table(local.files["all"][0]), pq.read_table(dask.files["all"][0])
    assert a.equals(b) and str(b.schema.field("x").type) == "double"


def test_cli_geometries_csv_round_trips(tmp_path):
    transform = from_origin(500000.123, 4600000.987, 0.37, 0.37)
    src, labels = labelled_scene(tmp_path, "EPSG:32633", transform)
    labels.to_file(tmp_path / "pts.gpkg")
    out = tmp_path / "s.csv"
    r = CliRunner().invoke(main, ["export", "samples", src, "--labels", str(tmp_path / "pts.gpkg"),
                                  "--label-field", "cls", "--geometries", "-o", str(out), "-q"])
    assert r.exit_code == 0, r.output
    arr = np.loadtxt(out, delimiter=",", skiprows=1)
    xs, ys = expected_centres(transform, arr[:, 0], arr[:, 1])
    np.testing.assert_array_equal(arr[:, 3], xs)
    np.testing.assert_array_equal(arr[:, 4], ys)


def test_import_takes_upper_case_files_from_a_folder(tmp_path):
    """``tilecast import FOLDER`` finds prediction files whatever the case of their suffix."""
    src = write_raster(tmp_path / "s.tif", coord_image(20, 30, 2))
    res = export_image(src, tmp_path / "tiles", 10, compressed=False)
    preds = tmp_path / "preds"
    preds.mkdir()
    for k, f in enumerate(res.files["all"]):
        (preds / f"PRED-{k:05d}.TFRECORD").write_bytes(f.read_bytes())
    out = import_predictions(preds, res.mixer, tmp_path / "back.tif")
    with rasterio.open(out) as back:
        np.testing.assert_array_equal(back.read(), coord_image(20, 30, 2))


def test_csv_header_quotes_names_holding_commas(tmp_path):
    """Band descriptions are free text: a comma in one split the header into more columns than the rows have."""
    pd = pytest.importorskip("pandas")
    transform = from_origin(500000.0, 4600000.0, 10.0, 10.0)
    src = write_raster(tmp_path / "s.tif", coord_image(40, 50, 2), transform=transform,
                       descriptions=['red, 665 "nm"', "nir"])
    _, labels = labelled_scene(tmp_path, "EPSG:32633", transform, name="other.tif")
    res = export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls")
    got = pd.read_csv(res.files["all"][0])
    assert list(got.columns) == ['red, 665 "nm"', "nir", "cls"]
    assert sorted(zip(got['red, 665 "nm"'], got["nir"], strict=True)) == sorted(RC)
    assert res.files["all"][0].read_text().splitlines()[0] == '"red, 665 ""nm""",nir,cls'


@pytest.mark.parametrize("engine", ["local", "dask"])
@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_table_split_without_samples_is_an_empty_table(tmp_path, suffix, engine, request):
    """A split that gets no sample (warned about) is an empty table with the other splits' columns: Parquet failed
    the whole export ('every sample was masked') and CSV wrote a 0-byte file that CSV readers refuse."""
    pd = pytest.importorskip("pandas")
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    kw = {} if engine == "local" else {"engine": Dask(client=request.getfixturevalue("dask_client"))}
    with pytest.warns(UserWarning, match="'test' got no samples"):
        res = export_samples(src, tmp_path / f"s{suffix}", labels=labels, label_field="cls", geometries=True,
                             splits={"train": 1, "test": 1e-9}, split_block=8, **kw)
    assert res.counts == {"train": len(RC), "test": 0}
    read = pd.read_parquet if suffix == ".parquet" else pd.read_csv
    train, test = read(res.files["train"][0]), read(res.files["test"][0])
    assert list(test.columns) == list(train.columns) == ["b1", "b2", "cls", "x", "y"] and len(test) == 0
    if suffix == ".parquet":
        a, b = pq.read_schema(res.files["train"][0]), pq.read_schema(res.files["test"][0])
        assert a.equals(b, check_metadata=False)


@pytest.mark.parametrize("name", ["a/b", "", " ", "..", "x\\\\y"])
def test_split_names_that_are_not_file_names_are_refused(tmp_path, name):
    """Split names name the files: 'a/b' ended in a raw FileNotFoundError, '' wrote '-00000.tfrecord.gz'."""
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    with pytest.raises(OutputError, match="split name"):
        export_samples(src, tmp_path / "out", labels=labels, label_field="cls", splits={name: 1, "test": 1})
    assert not (tmp_path / "out").exists()


def test_a_split_named_all_gets_its_own_file(tmp_path):
    """'all' means 'no splits' inside the export: a split so named was written to the whole export's name."""
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    res = export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls", splits={"all": 1, "test": 1},
                         split_block=8)
    assert res.files == {"all": [tmp_path / "s-all.csv"], "test": [tmp_path / "s-test.csv"]}
    assert not (tmp_path / "s.csv").exists()


def test_cli_refuses_a_split_given_twice(tmp_path):
    src, _ = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    r = CliRunner().invoke(main, ["export", "samples", src, "--label-raster", src, "--label-name", "lab",
                                  "--splits", "train=0.5,train=0.5,test=0.5", "-o", str(tmp_path / "s.csv"), "-q"])
    assert r.exit_code == 2 and "'train' is given twice" in r.output


@pytest.mark.parametrize("seed", range(1, 5))  # seeds that give both splits blocks
def test_split_patches_reaching_past_the_bottom_right_edge_are_kept(tmp_path, seed):
    """Blocked splits drop a sample whose patch reaches into another split's block; pixels past the raster are
    padding, in no block. Above/left of the raster that held, but below/right a patch was checked against blocks
    that do not exist, so edge samples were dropped or kept by the hash of a phantom block."""
    src = write_raster(tmp_path / "s.tif", coord_image(64, 64, 2))
    lab = write_raster(tmp_path / "l.tif", np.ones((64, 64), np.uint8))
    res = export_samples(src, tmp_path / "p", label_raster=lab, patch=5, splits={"train": 1, "test": 1},
                         split_block=32, seed=seed)
    got = {k: TFRecordDataset(res.spec, split=k).to_numpy() for k in res.files}
    block_split = {}
    for k, d in got.items():  # the centre pixel's values are its row and column
        for r, c in zip(d["b1"][:, 2, 2].astype(int), d["b2"][:, 2, 2].astype(int), strict=True):
            block_split[(r // 32, c // 32)] = k
    assert len(block_split) == 4  # every block keeps its interior samples
    want = {k: set() for k in got}
    for r in range(64):
        for c in range(64):
            rows = range(max(r - 2, 0) // 32, min(r + 2, 63) // 32 + 1)
            cols = range(max(c - 2, 0) // 32, min(c + 2, 63) // 32 + 1)
            splits = {block_split[(br, bc)] for br in rows for bc in cols}
            if len(splits) == 1:
                want[splits.pop()].add((r, c))
    for k, d in got.items():
        kept = set(zip(d["b1"][:, 2, 2].astype(int).tolist(), d["b2"][:, 2, 2].astype(int).tolist(), strict=True))
        assert kept == want[k]


def test_multipoint_labels_error_names_the_fix(tmp_path):
    shapely = pytest.importorskip("shapely.geometry")
    src = write_raster(tmp_path / "s.tif", coord_image(40, 50, 2))
    labels = gpd.GeoDataFrame({"cls": [1]}, geometry=[shapely.MultiPoint([(500005.0, 4599995.0)])], crs="EPSG:32633")
    with pytest.raises(InputError, match=r"MultiPoint.*explode"):
        export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls")


def test_an_empty_upper_case_gz_file_is_truncated(tmp_path):
    """A GZIP file is never empty: a 0-byte .tfrecord.gz is a truncated download, whatever the suffix's case."""
    from tilecast.export.tfrecord import iter_records

    for name in ("e.tfrecord.gz", "E.TFRECORD.GZ"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(InputError, match="truncated"):
            list(iter_records(tmp_path / name))


def test_per_class_keys_that_match_no_label_are_reported(tmp_path):
    """{'1': 5} for the label 1.0 (or a typo) dropped that class without a word; the count is kept per class."""
    src, labels = labelled_scene(tmp_path, "EPSG:32633", from_origin(500000.0, 4600000.0, 10.0, 10.0))
    labels["cls"] = [1, 1, 2, 2]
    with pytest.warns(TilecastWarning, match=r"per_class names \['1', 7\].*labels are 1, 2"):
        res = export_samples(src, tmp_path / "s.csv", labels=labels, label_field="cls", per_class={"1": 5, 2: 1, 7: 3})
    assert res.count == 1  # class 1 got no count (the key '1' is not the label 1.0), class 2 got one
    res = export_samples(src, tmp_path / "t.csv", labels=labels, label_field="cls", per_class={1: 5, 2: 1})
    assert res.count == 3


def test_a_fractional_window_exports_the_pixels_it_touches(tmp_path):
    """A window from ``rasterio.windows.from_bounds`` is fractional: the export covers every pixel it touches, as
    ``predict_image`` does, instead of truncating it (which moved the patch grid and dropped the last patch)."""
    from rasterio.windows import Window

    src = write_raster(tmp_path / "scene.tif", coord_image(40, 48, bands=2))
    a = export_image(src, tmp_path / "a", 8, window=Window(8.6, 4.2, 15.9, 15.3))
    b = export_image(src, tmp_path / "b", 8, window=Window(8, 4, 17, 16))  # the pixels it touches
    assert a.count == b.count == 4
    assert [p.read_bytes() for p in a.files["all"]] == [p.read_bytes() for p in b.files["all"]]
    assert json.loads(a.mixer.read_text()) == json.loads(b.mixer.read_text())


def test_predict_features_geojson_is_rfc7946_lon_lat(tmp_path):
    """A GeoJSON features output held projected coordinates under a legacy ``crs`` member most readers ignore: it is
    WGS84 lon/lat now (RFC 7946), the points where pyproj puts them, the predictions unchanged."""
    import json

    import pyogrio
    from pyproj import Transformer
    from shapely.geometry import Point

    from tilecast.features import predict_features_file
    from tilecast.runtimes.callable import CallableRuntime

    xs, ys = np.array([500_000.0, 512_345.678, 499_001.25]), np.array([4_600_000.0, 4_611_111.5, 4_598_765.0])
    src = tmp_path / "pts.gpkg"
    gpd.GeoDataFrame({"a": [1.0, 2.0, 3.0]}, geometry=[Point(x, y) for x, y in zip(xs, ys, strict=True)],
                     crs="EPSG:32633").to_file(src)
    rt = CallableRuntime(lambda a: a * 2, outputs=["out"])
    dst = predict_features_file(rt, src, tmp_path / "o.geojson", input_properties=["a"],
                                output_properties=["out:float32"])
    doc = json.loads(dst.read_text())
    assert "crs" not in doc  # RFC 7946 has no crs member: lon/lat is implied
    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(xs, ys)
    got = np.array([f["geometry"]["coordinates"] for f in doc["features"]])
    np.testing.assert_allclose(got[:, 0], lon, atol=1e-8)
    np.testing.assert_allclose(got[:, 1], lat, atol=1e-8)
    assert [f["properties"]["out"] for f in doc["features"]] == [2.0, 4.0, 6.0]
    assert pyogrio.read_info(dst)["crs"] == "EPSG:4326"
