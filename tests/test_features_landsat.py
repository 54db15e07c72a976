"""Acceptance on real data: the Landsat 7 bands and labelled polygons/points from ``tilecast.datasets``.

A scikit-learn classifier trained on the labelled points is converted to ONNX and run by ``tilecast
predict-features`` with zonal means over the polygons. Its predictions must equal scikit-learn's own ``predict`` on
means computed independently here with rasterio.mask. Every vector format round-trips through the same pipeline.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

gpd = pytest.importorskip("geopandas")
pytest.importorskip("pyogrio")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("skl2onnx")

import rasterio  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from rasterio.mask import mask as rio_mask  # noqa: E402

from tabular_models import tabular_classifier  # noqa: E402
from tilecast.cli import main  # noqa: E402
from tilecast.datasets import landsat_dir  # noqa: E402
from tilecast.features import predict_features_file  # noqa: E402
from tilecast.runtimes.onnx import OnnxRuntime  # noqa: E402

try:
    DATA = str(landsat_dir())
except FileNotFoundError as exc:  # `make test` fetches it; CI must not skip quietly
    if os.environ.get("CI"):
        raise
    pytest.skip(str(exc), allow_module_level=True)
BANDS = {"b1": 10, "b2": 20, "b3": 30, "b4": 40, "b5": 50, "b7": 70}
RASTERS = {name: os.path.join(DATA, f"lsat7_2000_{n}.tif") for name, n in BANDS.items()}
FEATURES = [f"{b}_mean" for b in BANDS]
POLYGONS = os.path.join(DATA, "landsat96_polygons.shp")


def _read(path):
    if str(path).endswith(".parquet"):
        return gpd.read_parquet(path)
    return gpd.read_file(path, engine="pyogrio")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    points = _read(os.path.join(DATA, "landsat96_points.shp"))
    points = points.dropna(subset=list(BANDS))
    x = points[list(BANDS)].to_numpy(np.float32)
    est, onx = tabular_classifier(x, points["id"].to_numpy(), kind="forest")
    path = tmp_path_factory.mktemp("model") / "landcover.onnx"
    path.write_bytes(onx)
    return est, path


def _reference_means(polygons):
    """Zonal means computed independently: rasterio.mask per band, pixel-centre rule, nodata excluded."""
    means = np.full((len(polygons), len(BANDS)), np.nan)
    for j, path in enumerate(RASTERS.values()):
        with rasterio.open(path) as ds:
            geoms = polygons.to_crs(ds.crs).geometry
            for i, geom in enumerate(geoms):
                try:
                    data, _ = rio_mask(ds, [geom], crop=True, filled=False)
                except ValueError:  # the polygon lies off the raster
                    continue
                values = data[0].compressed()
                if values.size:
                    means[i, j] = values.astype(np.float64).mean()
    return means


def test_cli_zonal_predictions_equal_sklearn(tmp_path, classifier):
    est, model = classifier
    out = tmp_path / "pred.gpkg"
    args = ["predict-features", POLYGONS, "--model", str(model), "--stats", "mean,std", "--nulls", "skip",
            "--input-property", ",".join(FEATURES), "--output-property", "landcover=label:int32",
            "--output-property", "probs=probabilities:float32:1", "-o", str(out), "-q"]
    for name, path in RASTERS.items():
        args += ["--sample", f"{name}={path}"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output

    polygons = _read(POLYGONS)
    got = _read(out)
    means = _reference_means(polygons)
    valid = ~np.isnan(means).any(axis=1)
    assert valid.sum() >= 25 and (~valid).sum() >= 1  # some polygons lie off the Landsat scene
    expected = est.predict(means[valid].astype(np.float32))
    np.testing.assert_array_equal(got["landcover"].to_numpy()[valid], expected)
    assert got["landcover"].isna().to_numpy().tolist() == (~valid).tolist()
    probs = got[[f"probs_{k}" for k in range(len(est.classes_))]].to_numpy()[valid]
    np.testing.assert_allclose(probs, est.predict_proba(means[valid].astype(np.float32)), atol=1e-5)
    # the original columns and geometry are kept
    assert got.crs == polygons.crs
    assert got["label"].tolist() == polygons["label"].tolist()
    assert got.geometry.geom_equals_exact(polygons.geometry, tolerance=1e-6).all()


FORMATS = {
    # extension: (dtype of an int32 property, dtype of a float32 property, array outputs as lists?)
    "parquet": ("int32", "float32", True),
    "gpkg": ("int32", "float32", False),
    "geojson": ("int32", "float64", True),
    "fgb": ("int32", "float32", False),
    "shp": ("int32", "float64", False),
}


def _write_input(polygons, path):
    # GeoJSON would take a column named 'id' (not unique here) as the feature id, and GDAL warns
    polygons = polygons.rename(columns={"id": "class_id"})
    if path.suffix == ".parquet":
        polygons.to_parquet(path)
    elif path.suffix == ".fgb":  # FlatGeobuf's spatial index would reorder the features
        polygons.to_file(path, engine="pyogrio", layer_options={"SPATIAL_INDEX": "NO"})
    else:
        polygons.to_file(path, engine="pyogrio")


@pytest.mark.parametrize("ext", list(FORMATS))
def test_formats_round_trip(tmp_path, classifier, ext):
    est, model = classifier
    polygons = _read(POLYGONS)
    src = tmp_path / f"in.{ext}"
    _write_input(polygons, src)
    dst = tmp_path / "out" / f"pred.{ext}"
    dst.parent.mkdir()
    predict_features_file(
        OnnxRuntime(model), src, dst, sample=RASTERS, stats=["mean"], nulls="fill", fill_value=0,
        output_properties=["cls=label:int32", "p=probabilities:float32:1"], batch_size=8,
    )
    got = _read(dst)
    int_dtype, float_dtype, lists = FORMATS[ext]
    assert len(got) == len(polygons)
    # GeoJSON is RFC 7946: lon/lat with 9 decimals and counter-clockwise outer rings, whatever the input's CRS
    want = polygons.to_crs("EPSG:4326") if ext == "geojson" else polygons
    assert got.crs.equals(want.crs)
    tolerance = 1e-8 if ext == "geojson" else 1e-6
    assert got.geometry.normalize().geom_equals_exact(want.geometry.normalize(), tolerance=tolerance).all()
    assert got["label"].tolist() == polygons["label"].tolist() and got["class_id"].tolist() == polygons["id"].tolist()
    assert str(got["cls"].dtype) == int_dtype
    assert set(got["cls"]) <= set(est.classes_)
    k = len(est.classes_)
    if lists:
        probs = np.stack(got["p"].to_numpy())
        assert probs.shape == (len(polygons), k)
    else:
        cols = [f"p_{j}" for j in range(k)]
        assert all(str(got[c].dtype) == float_dtype for c in cols)
        probs = got[cols].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    if ext == "parquet":
        meta = pq.ParquetFile(dst)
        assert meta.num_row_groups == 5  # 34 features in batches of 8, one row group each
        assert str(meta.schema_arrow.field("cls").type) == "int32"
        ptype = meta.schema_arrow.field("p").type
        assert ptype.num_fields == 1 and str(ptype.value_type) == "float"  # list<float32>
    assert sorted(os.listdir(dst.parent))[0].startswith("pred.")  # no temporary folder left behind
    assert not [f for f in os.listdir(dst.parent) if f.startswith(".")]
