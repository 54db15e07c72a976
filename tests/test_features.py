"""predict_properties on synthetic features: inputs, nulls, outputs, raster-derived inputs and errors."""

from __future__ import annotations

import numpy as np
import pytest

gpd = pytest.importorskip("geopandas")
shapely = pytest.importorskip("shapely")
pytest.importorskip("pyogrio")
pytest.importorskip("pyarrow")

import rasterio  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from rasterio.mask import mask as rio_mask  # noqa: E402
from shapely.geometry import Point, box  # noqa: E402

from conftest import coord_image  # noqa: E402
from tilecast.cli import main  # noqa: E402
from tilecast.errors import CastError, InputError, OutputExistsError, SpecError, TilecastWarning  # noqa: E402
from tilecast.features import parse_output_properties, predict_features_file, predict_properties  # noqa: E402
from tilecast.runtimes.base import TensorSpec  # noqa: E402
from tilecast.runtimes.callable import CallableRuntime  # noqa: E402

ORIGIN_X, ORIGIN_Y, RES = 500000.0, 4600000.0, 10.0


def _gdf(n=5, crs="EPSG:32633", **cols):
    geoms = [Point(ORIGIN_X + 5 + 10 * i, ORIGIN_Y - 5 - 10 * i) for i in range(n)]
    data = {"a": np.arange(n, dtype=np.float64), "b": np.arange(n, dtype=np.int64) * 10, **cols}
    return gpd.GeoDataFrame(data, geometry=geoms, crs=crs)


def _recorder(outputs=("out",), fn=None):
    seen = {}

    def model(batch):
        batch = batch if isinstance(batch, dict) else {"x": batch}
        seen.update({k: np.asarray(v) for k, v in batch.items()})
        if fn is not None:
            return fn(batch)
        total = sum(np.asarray(v, dtype=float).reshape(len(v), -1).sum(axis=1) for v in batch.values())
        return {outputs[0]: total}

    return model, seen


# --- output properties -------------------------------------------------------------------------------------------


def test_parse_output_properties_forms():
    props = parse_output_properties(["crop=label:int32", "probs=probabilities:float32:1", "name:str"])
    assert [(p.name, p.dtype, p.dimensions, p.output) for p in props] == [
        ("crop", np.dtype("int32"), 0, "label"), ("probs", np.dtype("float32"), 1, "probabilities"),
        ("name", np.dtype(object), 0, None)]
    (p,) = parse_output_properties({"scores": {"type": "float", "dimensions": 1}})
    assert p.dtype == np.dtype("float64") and p.dimensions == 1
    with pytest.raises(SpecError, match="required"):
        parse_output_properties(None)
    with pytest.raises(SpecError, match="NAME"):
        parse_output_properties(["crop"])
    with pytest.raises(SpecError, match="unique"):
        parse_output_properties(["a:int32", "a:int8"])


# --- property inputs ---------------------------------------------------------------------------------------------


def test_named_inputs_merge_into_features():
    gdf = _gdf()
    fn, seen = _recorder()
    rt = CallableRuntime(fn, inputs=["a", "b"], outputs=["out"])
    out = predict_properties(rt, gdf, output_properties={"out": "float32"})
    assert set(seen) == {"a", "b"} and seen["a"].shape == (5,)
    assert list(out.columns) == ["a", "b", "geometry", "out"]
    assert out["out"].dtype == np.float32
    np.testing.assert_array_equal(out["out"], np.arange(5) * 11)
    assert "out" not in gdf.columns  # a new GeoDataFrame; the input is untouched
    assert out.crs == gdf.crs and out.geometry.equals(gdf.geometry)


def test_stacked_layout_orders_properties_and_checks_width():
    gdf = _gdf(c=np.ones(5))
    fn, seen = _recorder()
    rt = CallableRuntime(fn, inputs=[TensorSpec("input", (None, 2), np.dtype("float32"))], outputs=["out"])
    predict_properties(rt, gdf, input_properties=["b", "a"], output_properties=["out:float64"])
    assert seen["x"].dtype == np.float32 and seen["x"].shape == (5, 2)
    np.testing.assert_array_equal(seen["x"][:, 0], gdf["b"])
    with pytest.raises(InputError, match=r"takes 2 values per feature.*3"):
        predict_properties(rt, gdf, input_properties=["a", "b", "c"], output_properties=["out:float64"])


def test_input_type_override_strings_booleans_and_arrays():
    gdf = _gdf(flag=[True, False, True, True, False], word=list("vwxyz"),
               hist=[[i, i + 1, i + 2] for i in range(5)])
    fn, seen = _recorder(fn=lambda b: {"out": np.arange(len(b["a"]))})
    rt = CallableRuntime(fn, outputs=["out"])
    predict_properties(rt, gdf, input_properties=["a", "b", "flag", "word", "hist"], output_properties=["out:int8"],
                       input_type_override={"b": "float32", "a": "str"}, input_shapes={"hist": [3]})
    assert seen["b"].dtype == np.float32
    assert seen["a"].dtype == object and seen["a"][1] == "1.0"
    assert seen["flag"].dtype == np.bool_ and seen["flag"].tolist() == [True, False, True, True, False]
    assert seen["word"].dtype == object and seen["word"].tolist() == list("vwxyz")
    assert seen["hist"].shape == (5, 3) and seen["hist"][4].tolist() == [4, 5, 6]
    with pytest.raises(InputError, match=r"'hist' of feature 0 has shape \[3\].*\[4\]"):
        predict_properties(rt, gdf, input_properties=["hist"], output_properties=["out:int8"],
                           input_shapes={"hist": [4]})


def test_missing_property_and_wrong_type_errors():
    gdf = _gdf(word=list("vwxyz"))
    rt = CallableRuntime(_recorder()[0], outputs=["out"])
    with pytest.raises(InputError, match=r"missing input property \['nope'\].*--input-property"):
        predict_properties(rt, gdf, input_properties=["nope"], output_properties=["out:float32"])
    stacked = CallableRuntime(_recorder()[0], inputs=[TensorSpec("input", (None, 2), np.dtype("float32"))],
                              outputs=["out"])
    with pytest.raises(InputError, match="'word' holds strings"):
        predict_properties(stacked, gdf, input_properties=["a", "word"], output_properties=["out:float32"])
    with pytest.raises(InputError, match="not numbers"):
        predict_properties(rt, gdf, input_properties=["word"], output_properties=["out:float32"],
                           input_type_override={"word": "float32"})


def test_null_policies():
    a = np.array([0.0, np.nan, 2.0, 3.0, np.nan])
    gdf = _gdf(a=a)
    rt = CallableRuntime(lambda b: b["a"] + b["b"], outputs=["out"])
    with pytest.raises(InputError, match=r"'a' is null .* 2 feature\(s\), e.g. \[1, 4\].*nulls='fill'"):
        predict_properties(rt, gdf, input_properties=["a", "b"], output_properties=["out:int32"])
    filled = predict_properties(rt, gdf, input_properties=["a", "b"], output_properties=["out:int32"],
                                nulls="fill", fill_value=-1)
    assert filled["out"].dtype == np.int32 and filled["out"].tolist() == [0, 9, 22, 33, 39]
    skipped = predict_properties(rt, gdf, input_properties=["a", "b"], output_properties=["out:int32"],
                                 nulls="skip")
    assert str(skipped["out"].dtype) == "Int32"
    assert skipped["out"].isna().tolist() == [False, True, False, False, True]
    assert skipped["out"].dropna().tolist() == [0, 22, 33]
    arrays = CallableRuntime(lambda b: np.stack([b["a"], b["b"]], axis=1), outputs=["out"])
    multi = predict_properties(rt, gdf, input_properties=["a", "b"], output_properties=["out:int32"], nulls="skip",
                               batch_size=2)  # batches with and without nulls
    assert str(multi["out"].dtype) == "Int32" and multi["out"].isna().tolist() == [False, True, False, False, True]
    listed = predict_properties(arrays, gdf, input_properties=["a", "b"], output_properties=["out:float32:1"],
                                nulls="skip", batch_size=2)
    assert listed["out"].iloc[1] is None and listed["out"].iloc[2].tolist() == [2, 20]


def test_outputs_by_name_and_order_arrays_list_or_split():
    gdf = _gdf()

    def fn(b):  # one input: the callable gets the array itself
        n = len(b)
        return {"label": np.arange(n, dtype=np.int64), "probabilities": np.full((n, 3), 0.25, np.float32)}

    rt = CallableRuntime(fn, outputs=["label", "probabilities"])
    out = predict_properties(rt, gdf, input_properties=["a"], output_properties=["crop:uint8", "p:float32:1"])
    assert out["crop"].dtype == np.uint8 and out["crop"].tolist() == [0, 1, 2, 3, 4]
    assert out["p"].iloc[0].dtype == np.float32 and out["p"].iloc[0].tolist() == [0.25] * 3
    split = predict_properties(rt, gdf, input_properties=["a"], output_properties=["p=probabilities:float32:1"],
                               array_columns="split")
    assert [c for c in split.columns if c.startswith("p_")] == ["p_0", "p_1", "p_2"]
    assert split["p_2"].dtype == np.float32
    with pytest.raises(SpecError, match="outputs are"):
        predict_properties(rt, gdf, input_properties=["a"], output_properties=["x=nothing:int32"])
    big = CallableRuntime(lambda b: np.full(len(b), 300.0), outputs=["out"])
    with pytest.raises(CastError, match=r"\[300.0, 300.0\].*uint8"):
        predict_properties(big, gdf, input_properties=["a"], output_properties=["out:uint8"])


def test_batches_give_the_same_result():
    gdf = _gdf(n=23)
    rt = CallableRuntime(lambda b: b["a"] * 2 + b["b"], outputs=["out"])
    kw = dict(input_properties=["a", "b"], output_properties=["out:float64"])
    one = predict_properties(rt, gdf, **kw)
    many = predict_properties(rt, gdf, batch_size=4, **kw)
    assert many.index.equals(gdf.index)
    np.testing.assert_array_equal(one["out"], many["out"])


# --- raster-derived inputs ---------------------------------------------------------------------------------------


def test_sample_points_reprojects_features(raster):
    path = raster(coord_image(40, 50, bands=3), descriptions=["row", "col", "code"])
    pts_utm = [Point(ORIGIN_X + 10 * c + 5, ORIGIN_Y - 10 * r - 5) for r, c in [(0, 0), (3, 7), (39, 49), (12, 2)]]
    pts_utm.append(Point(ORIGIN_X - 100, ORIGIN_Y))  # off the raster
    gdf = gpd.GeoDataFrame({"id": range(5)}, geometry=pts_utm, crs="EPSG:32633").to_crs("EPSG:4326")
    fn, seen = _recorder()
    rt = CallableRuntime(fn, outputs=["out"])
    out = predict_properties(rt, gdf, sample=path, output_properties=["out:float64"], nulls="skip")
    assert seen["row"].tolist() == [0, 3, 39, 12] and seen["col"].tolist() == [0, 7, 49, 2]
    with rasterio.open(path) as ds:
        expect = [v[2] for v in ds.sample([(p.x, p.y) for p in pts_utm[:4]])]
    assert seen["code"].tolist() == expect
    assert out["out"].isna().tolist() == [False] * 4 + [True]


def _masked_pixels(path, geom, all_touched):
    """Independent reference: rasterio.mask's pixels under the polygon, valid in every band."""
    with rasterio.open(path) as ds:
        data, _ = rio_mask(ds, [geom], crop=True, all_touched=all_touched, filled=False)
    valid = ~np.ma.getmaskarray(data).any(axis=0)
    return [np.asarray(band.data)[valid].astype(float) for band in data]


@pytest.mark.parametrize("all_touched", [False, True])
def test_zonal_statistics_match_rasterio_mask(raster, all_touched):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 100, size=(2, 30, 30)).astype(np.int16)
    data[0, 10, 10] = -1
    path = raster(data, nodata=-1)
    polys = [box(ORIGIN_X + 33, ORIGIN_Y - 187, ORIGIN_X + 121, ORIGIN_Y - 52),
             shapely.Polygon([(ORIGIN_X + 5, ORIGIN_Y - 5), (ORIGIN_X + 200, ORIGIN_Y - 40),
                              (ORIGIN_X + 60, ORIGIN_Y - 250)])]
    gdf = gpd.GeoDataFrame({"k": [1, 2]}, geometry=polys, crs="EPSG:32633")
    stats = ["mean", "std", "min", "max", "median", "count"]
    fn, seen = _recorder()
    rt = CallableRuntime(fn, outputs=["out"])
    predict_properties(rt, gdf, sample=path, stats=stats, all_touched=all_touched, output_properties=["out:float64"])
    assert len(seen) == 2 * len(stats)
    for i, geom in enumerate(polys):
        for name, vals in zip(["b1", "b2"], _masked_pixels(path, geom, all_touched), strict=True):
            assert seen[f"{name}_count"][i] == vals.size > 0
            for s, f in [("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max),
                         ("median", np.median)]:
                assert seen[f"{name}_{s}"][i] == pytest.approx(f(vals)), (name, s)


def test_patches_centred_and_padded(raster):
    path = raster(coord_image(20, 20, bands=2))
    geoms = [Point(ORIGIN_X + 10 * 8 + 5, ORIGIN_Y - 10 * 6 - 5), Point(ORIGIN_X + 5, ORIGIN_Y - 5),
             box(ORIGIN_X + 100, ORIGIN_Y - 100, ORIGIN_X + 120, ORIGIN_Y - 80)]
    gdf = gpd.GeoDataFrame({"k": [0, 1, 2]}, geometry=geoms, crs="EPSG:32633")
    seen = {}

    def fn(x):
        seen["x"] = x
        return np.zeros(len(x))

    rt = CallableRuntime(fn, inputs=[TensorSpec("patch", (None, 5, 5, 2), np.dtype("float32"))], outputs=["o"])
    predict_properties(rt, gdf, sample=path, patch_size=5, fill_value=-9, output_properties=["o:float32"])
    x = seen["x"]
    assert x.shape == (3, 5, 5, 2) and x.dtype == np.float32
    assert x[0, :, :, 0].tolist() == [[r] * 5 for r in range(4, 9)]
    assert x[0, 0, :, 1].tolist() == list(range(6, 11))
    assert x[1, 0, 0, 0] == -9 and x[1, 2, 2].tolist() == [0, 0]  # padded beyond the top-left corner
    assert x[2, 2, 2].tolist() == [9, 11]  # a polygon's centroid (110, -90) -> row 9, col 11
    nchw = CallableRuntime(fn, inputs=[TensorSpec("image", (None, 2, 5, 5), np.dtype("float32"))], outputs=["o"])
    predict_properties(nchw, gdf, sample=path, patch_size=5, output_properties=["o:float32"])
    assert seen["x"].shape == (3, 2, 5, 5)
    np.testing.assert_array_equal(seen["x"][0], x[0].transpose(2, 0, 1))


def test_raster_errors(raster):
    path = raster(coord_image(10, 10))
    rt = CallableRuntime(_recorder()[0], outputs=["out"])
    nocrs = _gdf(crs=None)
    with pytest.raises(InputError, match=r"no CRS.*features_crs"):
        predict_properties(rt, nocrs, sample=path, output_properties=["out:float32"])
    out = predict_properties(rt, nocrs, sample=path, output_properties=["out:float32"], features_crs="EPSG:32633")
    assert out.crs == "EPSG:32633"
    empty = _gdf()
    empty.loc[2, "geometry"] = Point()
    with pytest.raises(InputError, match=r"1 feature\(s\) have empty or missing geometry.*nulls='skip'"):
        predict_properties(rt, empty, sample=path, output_properties=["out:float32"])
    skipped = predict_properties(rt, empty, sample=path, output_properties=["out:float32"], nulls="skip")
    assert skipped["out"].isna().tolist() == [False, False, True, False, False]
    wrong = _gdf().set_crs("EPSG:32634", allow_override=True)  # the right numbers, the wrong UTM zone
    with pytest.raises(InputError, match=r"none of the first 5 features overlaps.*CRS is probably wrong"):
        predict_properties(rt, wrong, sample=path, output_properties=["out:float32"])
    with pytest.warns(TilecastWarning, match="none of the first 5 features"):
        out = predict_properties(rt, wrong, sample=path, output_properties=["out:float32"], nulls="skip")
    assert out["out"].isna().all()
    with pytest.raises(SpecError, match="unknown statistics"):
        predict_properties(rt, empty, sample=path, stats=["mode"], output_properties=["out:float32"])
    with pytest.raises(SpecError, match="need a raster"):
        predict_properties(rt, empty, stats=["mean"], output_properties=["out:float32"])


# --- files and CLI -----------------------------------------------------------------------------------------------


def test_file_output_is_atomic_and_not_overwritten(tmp_path):
    rt = CallableRuntime(lambda a: a * 2, outputs=["out"])
    dst = tmp_path / "o.gpkg"
    predict_features_file(rt, _gdf(), dst, input_properties=["a"], output_properties=["out:float32"])
    with pytest.raises(OutputExistsError, match="overwrite"):
        predict_features_file(rt, _gdf(), dst, input_properties=["a"], output_properties=["out:float32"])
    failing = CallableRuntime(lambda b: np.full(len(b), np.nan), outputs=["out"])
    with pytest.raises(CastError):
        predict_features_file(failing, _gdf(), tmp_path / "bad.gpkg", input_properties=["a"],
                              output_properties=["out:int32"])
    calls = []

    def fails_later(a):  # the second batch fails while GDAL is already writing the stream
        calls.append(1)
        return a if len(calls) == 1 else np.full(len(a), np.nan)

    for ext in ("gpkg", "parquet"):
        calls.clear()
        with pytest.raises(CastError, match="NaN"):
            predict_features_file(CallableRuntime(fails_later, outputs=["out"]), _gdf(n=6), tmp_path / f"late.{ext}",
                                  input_properties=["a"], output_properties=["out:int32"], batch_size=3)
        assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gpkg"]
    with pytest.raises(SpecError, match="list columns"):
        predict_features_file(rt, _gdf(), tmp_path / "l.gpkg", input_properties=["a"],
                              output_properties=["out:float32:1"], array_columns="list")


def _empty_input(tmp_path, ext):
    empty = _gdf(name=[f"f{i}" for i in range(5)]).iloc[0:0]
    path = tmp_path / f"in.{ext}"
    empty.to_parquet(path) if ext == "parquet" else empty.to_file(path, engine="pyogrio")
    return path


def _reopen(path):
    import pyogrio

    if str(path).endswith(".parquet"):
        return gpd.read_parquet(path)
    return pyogrio.read_dataframe(path)


@pytest.mark.parametrize("src_ext", ["gpkg", "parquet"])
@pytest.mark.parametrize("ext", ["gpkg", "parquet", "fgb"])
def test_an_empty_file_gives_an_empty_output_with_its_columns_and_the_predicted_ones(tmp_path, src_ext, ext):
    rt = CallableRuntime(lambda a: {"out": a * 2, "probs": np.stack([a, -a], axis=1), "tag": a.astype(str)},
                         outputs=["out", "probs", "tag"])
    dst = predict_features_file(rt, _empty_input(tmp_path, src_ext), tmp_path / f"o.{ext}", input_properties=["a"],
                                output_properties=["out:float32", "probs:float32:1", "tag:str"], nulls="skip")
    out = _reopen(dst)
    split = ext != "parquet"  # one column per element where the format has no list columns
    assert len(out) == 0 and out.crs == "EPSG:32633"
    assert list(out.columns) == ["a", "b", "name", "out", *(["probs_0"] if split else ["probs"]), "tag", "geometry"]
    assert out["a"].dtype == np.float64 and out["b"].dtype == np.int64 and out["out"].dtype == np.float32
    assert out["probs_0" if split else "probs"].dtype == (np.float32 if split else object)
    with pytest.raises(OutputExistsError):  # written like any output: atomically, and not overwritten
        predict_features_file(rt, _empty_input(tmp_path, src_ext), dst, input_properties=["a"],
                              output_properties=["out:float32"])


def test_an_empty_geojson_gives_a_valid_empty_output(tmp_path):
    import json

    src = _empty_input(tmp_path, "geojson")  # GeoJSON keeps no columns when it has no features
    rt = CallableRuntime(lambda a: a * 2, outputs=["out"])
    dst = predict_features_file(rt, src, tmp_path / "o.geojson", input_properties=["a"],
                                output_properties=["out:float32"])
    assert json.loads(dst.read_text())["features"] == []
    assert len(_reopen(dst)) == 0
    gpkg = _reopen(predict_features_file(rt, src, tmp_path / "o.gpkg", input_properties=["a"],
                                         output_properties=["out:float32"]))
    assert len(gpkg) == 0 and list(gpkg.columns) == ["out", "geometry"] and gpkg["out"].dtype == np.float32
    with pytest.raises(InputError, match=r"missing input property \['zz'\]"):  # a schema is still checked
        predict_features_file(rt, _empty_input(tmp_path, "gpkg"), tmp_path / "bad.gpkg", input_properties=["zz"],
                              output_properties=["out:float32"])


def test_predict_properties_on_empty_features_keeps_the_columns(tmp_path):
    rt = CallableRuntime(lambda a: a * 2, outputs=["out"])
    for features in (_gdf().iloc[0:0], _empty_input(tmp_path, "gpkg")):
        out = predict_properties(rt, features, input_properties=["a"], output_properties=["out:int32"])
        assert len(out) == 0 and {"a", "b", "out"} <= set(out.columns) and out["out"].dtype == np.int32


def test_cli_on_an_empty_file_splits_array_outputs_as_wide_as_the_model_says(tmp_path):
    from tabular_models import tabular_classifier

    _, onx = tabular_classifier(kind="tree", n_features=2, n_classes=3)
    model = tmp_path / "m.onnx"
    model.write_bytes(onx)
    dst = tmp_path / "o.gpkg"
    result = CliRunner().invoke(main, [
        "predict-features", str(_empty_input(tmp_path, "gpkg")), "-m", str(model), "--input-property", "a,b",
        "--output-property", "label:int32", "--output-property", "p=probabilities:float32:1", "-o", str(dst), "-q"])
    assert result.exit_code == 0, result.output
    out = _reopen(dst)
    assert len(out) == 0 and list(out.columns) == ["a", "b", "name", "label", "p_0", "p_1", "p_2", "geometry"]
    assert out["label"].dtype == np.int32


def test_cli_reports_errors_in_one_line(tmp_path):
    src = tmp_path / "in.gpkg"
    _gdf().to_file(src, engine="pyogrio")
    from tabular_models import tabular_regressor

    _, onx = tabular_regressor(n_features=2)
    model = tmp_path / "m.onnx"
    model.write_bytes(onx)
    runner = CliRunner()
    ok = runner.invoke(main, ["predict-features", str(src), "-m", str(model), "--input-property", "a,b",
                              "--output-property", "y=variable:float32", "-o", str(tmp_path / "o.parquet")])
    assert ok.exit_code == 0, ok.output
    assert "5/5 (100.0%) features" in ok.output  # progress on stderr
    out = gpd.read_parquet(tmp_path / "o.parquet")
    assert out["y"].dtype == np.float32 and out.crs == "EPSG:32633"
    bad = runner.invoke(main, ["predict-features", str(src), "-m", str(model), "--input-property", "a,zz",
                               "--output-property", "y:float32", "-o", str(tmp_path / "o2.parquet")])
    assert bad.exit_code == 1 and "InputError: missing input property ['zz']" in bad.output
    assert "Traceback" not in bad.output


def test_model_spec_supplies_defaults():
    """A tilecast.Model works as well as a runtime; its output_bands / input_properties are the defaults."""
    from tabular_models import tabular_classifier
    from tilecast import Model

    est, onx = tabular_classifier(n_features=2, kind="tree")
    model = Model.from_onnx(onx, output_bands={"label": "int16"}, input_properties=["b", "a"])
    gdf = _gdf(n=40)
    out = predict_properties(model, gdf)
    assert out["label"].dtype == np.int16
    expected = est.predict(gdf[["b", "a"]].to_numpy(np.float32))
    np.testing.assert_array_equal(out["label"], expected)
