"""Review 9 of the input side: STAC items (file:// and relative hrefs, mixed resolutions), ``tilecast predict``'s
options and ``tilecast predict-features``. Each test failed before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import coord_image, write_raster
from tilecast.sources import open_source

X0, Y0, RES = 500000.0, 4600000.0, 10.0


def _item(item_id: str, assets: dict[str, str], self_href: str | None = None) -> dict:
    links = [{"rel": "self", "href": self_href, "type": "application/json"}] if self_href else []
    return {
        "type": "Feature", "stac_version": "1.0.0", "id": item_id, "geometry": None, "links": links,
        "properties": {"datetime": "2026-01-01T00:00:00Z"},
        "assets": {k: {"href": h, "type": "image/tiff; application=geotiff", "roles": ["data"]}
                   for k, h in assets.items()},
    }


def _two_band_files(raster, folder: Path, img: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for b, name in enumerate(["B04", "B08"]):
        write_raster(folder / f"{name}.tif", img[b : b + 1])


# --- STAC: file:// and relative hrefs ------------------------------------------------------------------------------


def test_stac_file_url_asset_hrefs_are_opened_as_local_paths(raster, tmp_path):
    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "scene", img)
    item = _item("a", {k: (tmp_path / "scene" / f"{k}.tif").as_uri() for k in ("B04", "B08")})
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    src = open_source(str(path), bands=["B08", "B04"])
    assert np.array_equal(src.read(Window(0, 0, 48, 40))[0], img[[1, 0]])


def test_stac_relative_hrefs_follow_a_file_url_self_link(raster, tmp_path):
    """pystac writes a ``file://`` self link for an item it read from a ``file://`` URL; relative asset hrefs are
    relative to that item, wherever the JSON handed to tilecast lies."""
    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "catalog" / "items" / "scene", img)
    self_href = (tmp_path / "catalog" / "items" / "a.json").as_uri()
    item = _item("a", {"B04": "scene/B04.tif", "B08": "./scene/B08.tif"}, self_href=self_href)
    (tmp_path / "elsewhere").mkdir()
    path = tmp_path / "elsewhere" / "search.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [item]}))
    src = open_source(str(path), bands=["B04", "B08"])
    assert src.paths == [str(tmp_path / "catalog" / "items" / "scene" / f"{k}.tif") for k in ("B04", "B08")]
    assert np.array_equal(src.read(Window(0, 0, 48, 40))[0], img)


def test_stac_items_of_a_collection_resolve_relative_hrefs_against_their_own_self_links(raster, tmp_path):
    img = coord_image(40, 96, 2)
    left, right = img[:, :, :48], img[:, :, 48:]
    for name, part, x in (("left", left, X0), ("right", right, X0 + 48 * RES)):
        (tmp_path / name).mkdir()
        for b, band in enumerate(["B04", "B08"]):
            raster(part[b : b + 1], name=f"{name}/{band}.tif", transform=from_origin(x, Y0, RES, RES))
    items = [_item(n, {"B04": "B04.tif", "B08": "B08.tif"}, self_href=str(tmp_path / n / "item.json"))
             for n in ("left", "right")]
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    src = open_source(str(path), bands=["B04", "B08"])
    assert np.array_equal(src.read(Window(0, 0, 96, 40))[0], img)


def test_a_stac_json_given_as_a_file_url_is_read(raster, tmp_path):
    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "scene", img)
    path = tmp_path / "item.json"
    path.write_text(json.dumps(_item("a", {"B04": "scene/B04.tif", "B08": "scene/B08.tif"})))
    src = open_source(path.as_uri(), bands=["B04", "B08"])
    assert np.array_equal(src.read(Window(0, 0, 48, 40))[0], img)


def test_a_pystac_item_read_from_a_file_url_opens(raster, tmp_path):
    pystac = pytest.importorskip("pystac")
    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "items" / "scene", img)
    path = tmp_path / "items" / "a.json"
    path.write_text(json.dumps(_item("a", {"B04": "scene/B04.tif", "B08": "scene/B08.tif"})))
    item = pystac.Item.from_file(path.as_uri())
    assert any(str(link.href).startswith("file://") for link in item.links)  # what made GDAL fail
    src = open_source(item, bands=["B04", "B08"])
    assert src.paths == [str(tmp_path / "items" / "scene" / f"{k}.tif") for k in ("B04", "B08")]  # local paths
    assert np.array_equal(src.read(Window(0, 0, 48, 40))[0], img)
    coll = pystac.ItemCollection([item])
    assert np.array_equal(open_source(coll, bands=["B08"]).read(Window(0, 0, 48, 40))[0], img[[1]])


def test_a_file_url_with_escaped_characters_is_unescaped(raster, tmp_path):
    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "my scene", img)
    item = _item("a", {k: (tmp_path / "my scene" / f"{k}.tif").as_uri() for k in ("B04", "B08")})
    assert "%20" in item["assets"]["B04"]["href"]
    src = open_source(item, bands=["B04", "B08"])
    assert np.array_equal(src.read(Window(0, 0, 48, 40))[0], img)


def test_a_stac_asset_given_as_a_file_url_is_still_refused_as_the_output(raster, tmp_path):
    """With the URL kept, the input's path was not the output's, so ``-o`` onto an asset destroyed it."""
    from click.testing import CliRunner

    from onnx_models import linear_1x1
    from tilecast.cli import main

    img = coord_image(40, 48, 2)
    _two_band_files(raster, tmp_path / "scene", img)
    b04 = tmp_path / "scene" / "B04.tif"
    item = _item("a", {k: (tmp_path / "scene" / f"{k}.tif").as_uri() for k in ("B04", "B08")})
    path = tmp_path / "item.json"
    path.write_text(json.dumps(item))
    assert open_source(str(path), bands=["B04", "B08"]).paths == [str(b04), str(tmp_path / "scene" / "B08.tif")]
    model = linear_1x1(tmp_path / "m.onnx", [1.0, 1.0])
    before = b04.read_bytes()
    result = CliRunner().invoke(main, ["predict", str(path), "--model", model, "--bands", "B04,B08", "--tile", "16",
                                       "--output-band", "y:float32", "-o", str(b04), "--overwrite", "-q"])
    assert result.exit_code != 0 and "same file as the input" in result.output, result.output
    assert b04.read_bytes() == before


# --- STAC: assets of several bands or resolutions ------------------------------------------------------------------


def _visual_and_b11(tmp_path) -> tuple[dict, np.ndarray, np.ndarray]:
    """A 3-band 10 m ``visual`` asset and a 1-band 20 m ``B11`` asset (Sentinel-2 ships both kinds)."""
    img = coord_image(40, 48, 3)
    b11 = (coord_image(20, 24, 3)[2:3] + 5000).astype("float32")
    write_raster(tmp_path / "visual.tif", img)
    write_raster(tmp_path / "b11.tif", b11, transform=from_origin(X0, Y0, 2 * RES, 2 * RES))
    item = _item("a", {"visual": str(tmp_path / "visual.tif"), "B11": str(tmp_path / "b11.tif")})
    return item, img, b11


def test_a_multi_band_asset_named_in_bands_gives_all_its_bands(tmp_path):
    """Naming a 3-band asset used to give its first band only, and the next asset's name labelled its second band."""
    item, img, b11 = _visual_and_b11(tmp_path)
    src = open_source(item, bands=["visual", "B11"])
    assert src.band_names == ["visual_1", "visual_2", "visual_3", "B11"]
    data = src.read(Window(0, 0, 48, 40))[0]
    assert np.array_equal(data[:3], img)
    assert np.array_equal(data[3], b11[0].repeat(2, 0).repeat(2, 1))  # 20 m onto the 10 m grid, nearest


def test_several_data_assets_with_a_multi_band_one_keep_every_band(tmp_path):
    item, img, b11 = _visual_and_b11(tmp_path)
    item["assets"]["visual"]["roles"] = ["data"]
    src = open_source(item)
    assert src.band_names == ["visual_1", "visual_2", "visual_3", "B11"]
    assert np.array_equal(open_source(item, bands=["B11", "visual_2"]).read(Window(0, 0, 48, 40))[0],
                          np.stack([b11[0].repeat(2, 0).repeat(2, 1), img[1]]))


def test_a_data_asset_missing_from_a_later_item_is_an_error_naming_the_item_and_asset(tmp_path):
    from tilecast.errors import InputError

    item, _, _ = _visual_and_b11(tmp_path)
    item["assets"]["visual"]["roles"] = ["data"]
    other = json.loads(json.dumps(item))
    other["id"] = "b"
    del other["assets"]["visual"]
    with pytest.raises(InputError, match=r"'b'.*visual"):
        open_source({"type": "FeatureCollection", "features": [item, other]})


# --- predict-features ----------------------------------------------------------------------------------------------


def _stacked_model(path: Path) -> str:
    """``y = x @ [1, 1000]`` on an ``(N, 2)`` input: a prediction encodes both inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    w = numpy_helper.from_array(np.array([[1.0], [1000.0]], np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "linear", [x], [y], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _points_file(path: Path, **columns) -> str:
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    pts = [Point(X0 + 5 + 10 * i, Y0 - 5 - 20 * i) for i in range(3)]  # pixel (row 2i, col i)
    gpd.GeoDataFrame(columns or None, geometry=pts, crs="EPSG:32633").to_file(path)
    return str(path)


def _cli(*args: str):
    from click.testing import CliRunner

    from tilecast.cli import main

    return CliRunner().invoke(main, ["predict-features", *args, "-q"])


@pytest.mark.parametrize("ext", ["gpkg", "geojson", "fgb", "shp", "parquet"])
@pytest.mark.parametrize("name", ["geometry", "GEOMETRY"])
def test_an_output_property_named_like_the_geometry_column_is_refused(tmp_path, ext, name):
    """It gave GDAL's 'Geometry column should be of Arrow format' for OGR formats, and a GeoParquet file with two
    ``geometry`` columns that no reader opens."""
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    out = tmp_path / f"out.{ext}"
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--output-property", f"{name}:float32",
                  "-o", str(out))
    assert result.exit_code != 0 and "geometry" in result.output and "another name" in result.output, result.output
    assert not out.exists()


def test_a_property_that_is_both_a_feature_column_and_a_raster_band_is_refused(raster, tmp_path):
    """``--input-property b1,b2`` with a raster whose bands are b1, b2 silently read the raster, not the columns."""
    raster(coord_image(100, 120, 2), name="scene.tif")
    features = _points_file(tmp_path / "pts.gpkg", b1=[7.0, 8.0, 9.0], b2=[1.0, 2.0, 3.0])
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", str(tmp_path / "scene.tif"),
                  "--input-property", "b1,b2", "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code != 0 and "'b1'" in result.output and "NAME=RASTER" in result.output, result.output
    named = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", f"s={tmp_path / 'scene.tif'}",
                 "--input-property", "b1,s_b2", "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"))
    assert named.exit_code == 0, named.output
    import pyogrio

    got = pyogrio.read_dataframe(tmp_path / "o.gpkg")["pred"].to_numpy()
    assert np.array_equal(got, np.array([7.0, 8.0, 9.0]) + 1000 * np.arange(3))  # column b1 + 1000 * raster col


def test_an_output_property_named_like_a_geodataframes_geometry_column_is_refused(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from tilecast.errors import SpecError
    from tilecast.features import predict_properties
    from tilecast.runtimes.onnx import OnnxRuntime

    gdf = gpd.read_file(_points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0]))
    gdf = gdf.rename_geometry("geom")
    runtime = OnnxRuntime(_stacked_model(tmp_path / "m.onnx"))
    with pytest.raises(SpecError, match="'geom' would replace"):
        predict_properties(runtime, gdf, output_properties=["geom=y:float32"])
    out = predict_properties(runtime, gdf, output_properties=["pred=y:float32"])
    assert out.geometry.name == "geom" and np.array_equal(out["pred"], [4001.0, 5002.0, 6003.0])


def _polys_file(path: Path) -> str:
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    boxes = [box(X0 + 30 * i, Y0 - 30 - 30 * i, X0 + 30 * i + 30, Y0 - 30 * i) for i in range(3)]
    gpd.GeoDataFrame({"id": np.arange(3)}, geometry=boxes, crs="EPSG:32633").to_file(path)
    return str(path)


@pytest.mark.parametrize("flags, named", [
    (["--bands", "1"], ["--bands", "--sample"]),
    (["--all-touched"], ["--all-touched", "--sample"]),
    (["--sample", "SCENE", "--patch", "3", "--stats", "max"], ["--stats", "--patch"]),
    (["--sample", "SCENE", "--patch", "3", "--all-touched"], ["--all-touched", "--patch"]),
    (["--fill-value", "3"], ["--fill-value", "--nulls fill"]),
    (["--batch-size", "0"], ["--batch-size"]),
])
def test_predict_features_flags_that_would_be_ignored_are_refused(raster, tmp_path, flags, named):
    raster(coord_image(100, 120, 2), name="scene.tif")
    flags = [str(tmp_path / "scene.tif") if f == "SCENE" else f for f in flags]
    result = _cli(_polys_file(tmp_path / "polys.gpkg"), "-m", _stacked_model(tmp_path / "m.onnx"),
                  "--input-property", "id,id", "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"),
                  *flags)
    assert result.exit_code != 0 and all(n in result.output for n in named), result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.gpkg").exists()


def test_fill_value_with_nulls_fill_or_patch_is_accepted(raster, tmp_path):
    raster(coord_image(100, 120, 2), name="scene.tif")
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    pts = [Point(X0 + 5, Y0 - 5), Point(X0 - 100, Y0 + 100)]  # the second is off the raster: null
    gpd.GeoDataFrame({"id": [0, 1]}, geometry=pts, crs="EPSG:32633").to_file(tmp_path / "pts.gpkg")
    result = _cli(str(tmp_path / "pts.gpkg"), "-m", _stacked_model(tmp_path / "m.onnx"), "--sample",
                  str(tmp_path / "scene.tif"), "--nulls", "fill", "--fill-value", "3", "--output-property",
                  "pred:float32", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 0, result.output
    import pyogrio

    assert pyogrio.read_dataframe(tmp_path / "o.gpkg")["pred"].tolist() == [0.0, 3003.0]


def test_an_input_type_override_or_shape_for_no_input_property_is_an_error(tmp_path):
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    for flag in (["--input-type-override", "aa:float64"], ["--input-shape", "aa:4"]):
        result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--output-property", "pred:float32",
                      "-o", str(tmp_path / "o.gpkg"), *flag)
        assert result.exit_code != 0 and "'aa'" in result.output and "['a', 'b']" in result.output, result.output


def test_patches_for_a_model_of_one_value_per_feature_name_the_patch_not_tile_flags(raster, tmp_path):
    raster(coord_image(100, 120, 2), name="scene.tif")
    result = _cli(_polys_file(tmp_path / "polys.gpkg"), "-m", _stacked_model(tmp_path / "m.onnx"), "--sample",
                  str(tmp_path / "scene.tif"), "--patch", "3", "--output-property", "pred:float32",
                  "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code != 0 and "--patch" in result.output and "--tile" not in result.output, result.output


# --- predict: flags that would be ignored ---------------------------------------------------------------------------


def _predict(*args: str):
    from click.testing import CliRunner

    from tilecast.cli import main

    return CliRunner().invoke(main, ["predict", *map(str, args), "-q"])


@pytest.mark.parametrize("flags, named", [
    (["--protocol", "v2"], ["--protocol", "--endpoint"]),
    (["--timeout", "5", "--header", "X-A:1"], ["--timeout", "--header", "--endpoint"]),
    (["--memory-budget", "1GiB"], ["--memory-budget", "--tile"]),
    (["--resampling", "cubic"], ["--resampling", "--fix-input-proj"]),
])
def test_predict_flags_a_local_model_run_would_ignore_are_usage_errors(raster, tmp_path, flags, named):
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    out = tmp_path / "o.tif"
    result = _predict(image, "-m", linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0]), "--output-band", "y:float32",
                      "--tile", "16", "-o", out, *flags)
    assert result.exit_code == 2 and all(n in result.output for n in named), result.output
    assert not out.exists()


def test_memory_budget_without_tile_auto_is_a_usage_error(raster, tmp_path):
    """Without --tile, the error was 'input_tile_size is required ... --tile 256', not naming --tile auto."""
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    result = _predict(image, "-m", linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0]), "--output-band", "y:float32",
                      "--memory-budget", "64MiB", "-o", tmp_path / "o.tif")
    assert result.exit_code == 2 and "--tile auto" in result.output, result.output


@pytest.mark.parametrize("command", ["predict", "predict-features"])
def test_providers_with_an_endpoint_are_a_usage_error(tmp_path, command):
    from click.testing import CliRunner

    from tilecast.cli import main

    result = CliRunner().invoke(main, [command, str(tmp_path / "in.tif"), "--endpoint", "http://127.0.0.1:9/v2/models/m",
                                       "--providers", "cuda,cpu", "--output-band" if command == "predict" else
                                       "--output-property", "y:float32", "-o", str(tmp_path / "o.tif")])
    assert result.exit_code == 2 and "--providers" in result.output and "--endpoint" in result.output, result.output


def test_endpoint_flags_with_a_local_model_are_a_usage_error_in_predict_features(tmp_path):
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--output-property", "pred:float32",
                  "--concurrency", "8", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 2 and "--concurrency" in result.output and "--endpoint" in result.output, result.output


def test_resampling_with_fix_input_proj_and_memory_budget_with_tile_auto_are_accepted(raster, tmp_path):
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    model = linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0])
    ok = _predict(image, "-m", model, "--output-band", "y:float32", "--tile", "auto", "--memory-budget", "1GiB",
                  "--crs", "EPSG:32633", "--resolution", "20", "20", "--fix-input-proj", "--resampling", "nearest",
                  "-o", tmp_path / "o.tif")
    assert ok.exit_code == 0, ok.output
    import rasterio

    with rasterio.open(tmp_path / "o.tif") as ds:
        assert ds.res == (20.0, 20.0)
        # nearest at 20 m: each output pixel is one input pixel (row 2i or 2i+1, col 2j or 2j+1)
        value = ds.read(1)  # row + 1000 * col of the input pixel
        rows, cols = value % 1000, value // 1000
        assert set(np.unique(cols[0] - 2 * np.arange(24))) <= {0, 1}
        assert set(np.unique(rows[:, 0] - 2 * np.arange(20))) <= {0, 1}


@pytest.mark.parametrize("bands, message", [
    (["c:uint8", "y:float32:x"], "DIMS must be 0 or 1"),
    (["c"], "use NAME:DTYPE"),
    (["c:uint8", "y"], "use NAME:DTYPE"),
    (["c:uint8", "y:float32:1:5"], "use NAME:DTYPE"),
    (["c:uint8", "c:float32"], "unique"),
])
def test_output_bands_with_classes_are_checked_like_without(raster, tmp_path, bands, message):
    """With --classes, a second band's bad DIMS was a ValueError traceback, and a band without a dtype or with extra
    parts was taken as float32 (or the first band's dtype as '')."""
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    flags = [f for b in bands for f in ("--output-band", b)]
    result = _predict(image, "-m", linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0]), "--tile", "16", "--classes",
                      "a,b", *flags, "-o", tmp_path / "o.tif")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not isinstance(result.exception, ValueError)


# --- STAC: several item files, collections, bad JSON -----------------------------------------------------------------


def _item_files(raster, tmp_path) -> tuple[list[Path], np.ndarray]:
    """Two items side by side, each a JSON file next to its assets (relative hrefs, no self link)."""
    img = coord_image(40, 96, 2)
    paths = []
    for name, c in (("left", 0), ("right", 48)):
        folder = tmp_path / "items" / name
        folder.mkdir(parents=True)
        for b, band in enumerate(["B04", "B08"]):
            write_raster(folder / f"{band}.tif", img[b : b + 1, :, c : c + 48],
                         transform=from_origin(X0 + c * RES, Y0, RES, RES))
        path = folder / f"{name}.json"
        path.write_text(json.dumps(_item(name, {"B04": "B04.tif", "B08": "B08.tif"})))
        paths.append(path)
    return paths, img


def test_several_stac_item_files_are_one_mosaic_with_hrefs_relative_to_each_file(raster, tmp_path):
    """``tilecast predict items/*/*.json`` (a shell glob: several IMAGE arguments) was handed to GDAL file by file."""
    paths, img = _item_files(raster, tmp_path)
    for given in ([str(p) for p in paths], str(tmp_path / "items" / "*" / "*.json")):
        src = open_source(given, bands=["B04", "B08"])
        assert np.array_equal(src.read(Window(0, 0, 96, 40))[0], img)


def test_predict_takes_several_stac_item_files(raster, tmp_path):
    from onnx_models import linear_1x1

    paths, img = _item_files(raster, tmp_path)
    out = tmp_path / "o.tif"
    result = _predict(*paths, "-m", linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0]), "--output-band", "y:float32",
                      "--bands", "B04,B08", "--tile", "16", "-o", out)
    assert result.exit_code == 0, result.output
    import rasterio

    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(1), img[0] + 1000 * img[1])


def test_a_stac_collection_or_bad_json_is_an_input_error_saying_what_to_pass(tmp_path):
    from tilecast.errors import InputError

    coll = tmp_path / "collection.json"
    coll.write_text(json.dumps({"type": "Collection", "id": "c", "stac_version": "1.0.0", "links": [
        {"rel": "item", "href": "./items/a.json"}]}))
    with pytest.raises(InputError, match=r"STAC Collection.*items/\*/\*\.json"):
        open_source(str(coll))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        open_source(str(bad))
    from tilecast.errors import SourceNotFoundError

    with pytest.raises(SourceNotFoundError, match="no STAC file matches"):
        open_source(str(tmp_path / "nothing" / "*.json"))


# --- predict-features: layers and drivers ----------------------------------------------------------------------------


def test_layer_options_a_format_would_ignore_are_refused(tmp_path):
    gpd = pytest.importorskip("geopandas")
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    gpd.read_file(features).to_parquet(tmp_path / "pts.parquet")
    model = _stacked_model(tmp_path / "m.onnx")
    base = ["-m", model, "--output-property", "pred:float32"]
    cases = [
        ([str(tmp_path / "pts.parquet"), "--layer", "x", "-o", str(tmp_path / "o.gpkg")], "--layer"),
        ([features, "--output-layer", "x", "-o", str(tmp_path / "o.parquet")], "--output-layer"),
        ([features, "--output-layer", "x", "-o", str(tmp_path / "o.shp")], "--output-layer"),
        ([features, "--driver", "GPKG", "-o", str(tmp_path / "o.parquet")], "--driver"),
        ([features, "--driver", "NoSuchDriver", "-o", str(tmp_path / "o.xyz")], "NoSuchDriver"),
    ]
    for args, flag in cases:
        result = _cli(*args, *base)
        assert result.exit_code == 1 and flag in result.output and "Traceback" not in result.output, result.output
        assert not list(tmp_path.glob("o.*"))
    ok = _cli(features, *base, "--output-layer", "preds", "-o", str(tmp_path / "o.gpkg"))
    assert ok.exit_code == 0, ok.output
    import pyogrio

    assert pyogrio.list_layers(tmp_path / "o.gpkg")[:, 0].tolist() == ["preds"]


def test_the_features_file_is_never_the_output_even_with_overwrite(tmp_path):
    """It was replaced by the output, losing its other layers."""
    gpd = pytest.importorskip("geopandas")
    import pyogrio

    features = _points_file(tmp_path / "both.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    gpd.read_file(features).to_file(features, layer="other")
    before = pyogrio.list_layers(features)[:, 0].tolist()
    result = _cli(features, "--layer", "both", "-m", _stacked_model(tmp_path / "m.onnx"), "--output-property",
                  "pred:float32", "-o", features, "--overwrite")
    assert result.exit_code == 1 and "same file as the input" in result.output, result.output
    assert pyogrio.list_layers(features)[:, 0].tolist() == before == ["both", "other"]


def test_a_features_crs_that_contradicts_the_files_crs_is_refused(raster, tmp_path):
    """``--features-crs`` never reprojects; given for a file that declares another CRS it was silently ignored."""
    raster(coord_image(100, 120, 2), name="scene.tif")
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0])
    gpd = pytest.importorskip("geopandas")
    gpd.read_file(features).to_parquet(tmp_path / "pts.parquet")
    model = _stacked_model(tmp_path / "m.onnx")
    for path in (features, str(tmp_path / "pts.parquet")):
        result = _cli(path, "-m", model, "--sample", str(tmp_path / "scene.tif"), "--features-crs", "EPSG:4326",
                      "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"), "--overwrite")
        assert result.exit_code == 1 and "EPSG:32633" in result.output and "--features-crs" in result.output, \
            result.output
        same = _cli(path, "-m", model, "--sample", str(tmp_path / "scene.tif"), "--features-crs", "EPSG:32633",
                    "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"), "--overwrite")
        assert same.exit_code == 0, same.output
    from tilecast.errors import InputError
    from tilecast.features import open_features

    with pytest.raises(InputError, match="EPSG:32633"):
        open_features(gpd.read_file(features), crs="EPSG:4326")


def test_fix_input_proj_without_a_grid_to_warp_to_is_a_usage_error(raster, tmp_path):
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    result = _predict(image, "-m", linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0]), "--output-band", "y:float32",
                      "--tile", "16", "--fix-input-proj", "-o", tmp_path / "o.tif")
    assert result.exit_code == 2 and "--fix-input-proj" in result.output and "--crs" in result.output, result.output
    assert not (tmp_path / "o.tif").exists()


def test_colors_with_a_vector_output_are_refused(raster, tmp_path):
    """A vector file has no colour table: --colors was silently dropped."""
    from onnx_models import argmax_classes

    image = raster(coord_image(40, 48, 2))
    result = _predict(image, "-m", argmax_classes(tmp_path / "m.onnx", 2), "--output-band", "c:uint8", "--tile", "16",
                      "--colors", "tab10", "-o", tmp_path / "o.gpkg")
    assert result.exit_code != 0 and "--colors" in result.output and ".tif" in result.output, result.output
    assert not (tmp_path / "o.gpkg").exists()


def test_the_no_overlap_error_for_a_file_with_a_wrong_crs_does_not_advise_features_crs_alone(raster, tmp_path):
    """It said 'declare the right one (... or --features-crs)', which a file that declares a CRS ignored."""
    gpd = pytest.importorskip("geopandas")
    raster(coord_image(100, 120, 2), name="scene.tif")
    wrong = gpd.read_file(_points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0]))
    wrong.set_crs("EPSG:32634", allow_override=True).to_file(tmp_path / "wrong.gpkg")  # right numbers, wrong zone
    result = _cli(str(tmp_path / "wrong.gpkg"), "-m", _stacked_model(tmp_path / "m.onnx"), "--sample",
                  str(tmp_path / "scene.tif"), "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 1 and "ogr2ogr -a_srs" in result.output, result.output


# --- predict-features: zonal statistics over multipoints and straight lines ----------------------------------------


def _zonal(raster, tmp_path, geoms, stats=("mean", "count"), all_touched=False):
    gpd = pytest.importorskip("geopandas")
    from tilecast.features import RasterInputs

    img = coord_image(100, 120, 3)  # band 2: row * 1000 + col + 2
    path = raster(img, name="scene.tif")
    inputs = RasterInputs(path, mode="zonal", bands=[3], stats=stats, all_touched=all_touched)
    cols = inputs.compute(gpd.GeoSeries(geoms, crs="EPSG:32633"))
    inputs.close()
    return {c.name: (c.values, c.nulls) for c in cols}


def _px(row: int, col: int) -> tuple[float, float]:
    return X0 + col * RES + 5, Y0 - row * RES - 5


def test_zonal_statistics_of_a_multipoint_are_over_the_pixels_under_its_points(raster, tmp_path):
    """Its centroid's pixel was used: (row 2, col 2) for points at (0, 0) and (4, 4), a pixel under neither."""
    from shapely.geometry import MultiPoint, Point

    geoms = [MultiPoint([_px(0, 0), _px(4, 4)]), MultiPoint([_px(7, 3)]), Point(_px(7, 3)),
             MultiPoint([_px(1, 1), _px(1, 1)])]
    got = _zonal(raster, tmp_path, geoms, stats=("mean", "min", "max", "count"))
    values = lambda s: got[f"b3_{s}"][0].tolist()  # noqa: E731
    assert values("mean") == [(2 + 4004 + 2) / 2, 7005.0, 7005.0, 1003.0]
    assert values("min") == [2.0, 7005.0, 7005.0, 1003.0] and values("max") == [4006.0, 7005.0, 7005.0, 1003.0]
    assert values("count") == [2, 1, 1, 1]  # two points in one pixel count it once, as a polygon would


@pytest.mark.parametrize("all_touched", [False, True])
def test_zonal_statistics_of_a_horizontal_or_vertical_line_are_not_null(raster, tmp_path, all_touched):
    """A line with zero-height (or zero-width) bounds had no window: null, even with all_touched."""
    from shapely.geometry import LineString

    across = LineString([_px(3, 2), _px(3, 6)])  # through the centres of row 3, cols 2..6
    down = LineString([_px(1, 5), _px(4, 5)])
    got = _zonal(raster, tmp_path, [across, down], all_touched=all_touched)
    means, nulls = got["b3_mean"]
    assert not nulls.any()
    assert means.tolist() == [3000 + 4 + 2, 2500 + 5 + 2]
    counts = got["b3_count"][0].tolist()
    assert counts == [5, 4]


def test_sampling_a_multipoint_of_several_pixels_without_stats_is_an_error(raster, tmp_path):
    from shapely.geometry import MultiPoint, Point

    from tilecast.errors import InputError

    gpd = pytest.importorskip("geopandas")
    from tilecast.features import RasterInputs

    path = raster(coord_image(100, 120, 3), name="scene.tif")
    inputs = RasterInputs(path, mode="sample")
    one = inputs.compute(gpd.GeoSeries([MultiPoint([_px(2, 3)]), Point(_px(2, 3))], crs="EPSG:32633"))
    assert one[2].values.tolist() == [2005.0, 2005.0]
    with pytest.raises(InputError, match=r"MultiPoint.*--stats"):
        inputs.compute(gpd.GeoSeries([MultiPoint([_px(0, 0), _px(4, 4)])], crs="EPSG:32633"))


def test_a_predicted_property_name_a_shapefile_would_truncate_is_refused(raster, tmp_path):
    """GDAL laundered 'probability_water' to 'probabilit' with a raw RuntimeWarning from pyogrio."""
    raster(coord_image(100, 120, 2), name="scene.tif")
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0])
    args = [features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", str(tmp_path / "scene.tif")]
    result = _cli(*args, "--output-property", "probability_water=y:float32", "-o", str(tmp_path / "o.shp"))
    assert result.exit_code == 1 and "'probability_water'" in result.output and "10" in result.output, result.output
    assert not list(tmp_path.glob("o.*"))
    ok = _cli(*args, "--output-property", "p_water=y:float32", "-o", str(tmp_path / "o.shp"))
    assert ok.exit_code == 0, ok.output
    import pyogrio

    assert pyogrio.read_dataframe(tmp_path / "o.shp")["p_water"].tolist() == [0.0, 1002.0, 2004.0]


def test_a_data_asset_known_only_by_its_extension_may_carry_a_query_string(monkeypatch):
    """Signed URLs (``B04.tif?sig=...``) hid the .tif extension, so such an item had 'no raster data asset'."""
    import tilecast.sources.stac as stac

    seen = {}
    monkeypatch.setattr(stac, "MosaicSource", lambda members, bands, **kw: seen.setdefault("members", members))
    item = {"type": "Feature", "stac_version": "1.0.0", "id": "a", "geometry": None, "links": [], "properties": {},
            "assets": {"image": {"href": "https://example.com/a/B04.TIF?sig=x&se=2026"},
                       "thumb": {"href": "https://example.com/a/thumb.png?sig=x"}}}
    stac.stac_source(item)
    assert seen["members"] == [["https://example.com/a/B04.TIF?sig=x&se=2026"]]


def test_a_sample_raster_whose_file_name_holds_an_equals_sign_is_a_path(raster, tmp_path, monkeypatch):
    """``--sample ndvi=2024.tif`` names a raster, but a file called that is read as the file."""
    raster(coord_image(100, 120, 2), name="year=2024.tif")
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0])
    monkeypatch.chdir(tmp_path)
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", "year=2024.tif",
                  "--output-property", "pred:float32", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 0, result.output
    import pyogrio

    assert pyogrio.read_dataframe(tmp_path / "o.gpkg")["pred"].tolist() == [0.0, 1002.0, 2004.0]


@pytest.mark.parametrize("fill", [float("nan"), -1.0, 0.5])
def test_patch_padding_an_integer_raster_keeps_a_fill_value_it_cannot_hold(raster, tmp_path, fill):
    """NaN, -1 or 0.5 were cast into uint16 patches (0 with a raw RuntimeWarning, 65535, 0)."""
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    from tilecast.features import RasterInputs

    img = coord_image(100, 120, 2, dtype="uint16")
    inputs = RasterInputs(raster(img, name="int.tif"), mode="patch", patch_size=3, fill_value=fill)
    (col,) = inputs.compute(gpd.GeoSeries([Point(_px(0, 0)), Point(_px(5, 7))], crs="EPSG:32633"))
    inputs.close()
    corner, inner = col.values[0], col.values[1]  # (3, 3, 2) each
    expected = np.full((3, 3, 2), fill)
    expected[1:, 1:] = np.moveaxis(img[:, :2, :2], 0, -1)
    np.testing.assert_array_equal(corner, expected)
    np.testing.assert_array_equal(inner, np.moveaxis(img[:, 4:7, 6:9], 0, -1))
    assert col.values.dtype.kind == "f"


@pytest.mark.parametrize("ext", ["gpkg", "shp", "geojson", "fgb"])
def test_a_predicted_property_differing_only_in_case_from_a_column_is_refused(raster, tmp_path, ext):
    """GeoJSON silently kept one of 'crop' and 'Crop', FlatGeobuf wrote the predictions into 'crop' and left 'Crop'
    null, Shapefile renamed one 'Crop_1', GeoPackage failed in GDAL after the whole run."""
    raster(coord_image(100, 120, 2), name="scene.tif")
    features = _points_file(tmp_path / "pts.gpkg", crop=[1.0, 1.0, 1.0])
    args = [features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", str(tmp_path / "scene.tif"),
            "-o", str(tmp_path / f"o.{ext}")]
    result = _cli(*args, "--output-property", "Crop=y:float32")
    assert result.exit_code == 1 and "'Crop'" in result.output and "'crop'" in result.output, result.output
    assert not list(tmp_path.glob("o.*"))
    same = _cli(*args, "--output-property", "crop=y:float32")  # the same name replaces the column
    assert same.exit_code == 0, same.output
    import pyogrio

    assert pyogrio.read_dataframe(tmp_path / f"o.{ext}")["crop"].tolist() == [0.0, 1002.0, 2004.0]


def test_geoparquet_keeps_names_differing_only_in_case(raster, tmp_path):
    gpd = pytest.importorskip("geopandas")
    raster(coord_image(100, 120, 2), name="scene.tif")
    features = _points_file(tmp_path / "pts.gpkg", crop=[1.0, 1.0, 1.0])
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", str(tmp_path / "scene.tif"),
                  "--output-property", "Crop=y:float32", "-o", str(tmp_path / "o.parquet"))
    assert result.exit_code == 0, result.output
    df = gpd.read_parquet(tmp_path / "o.parquet")
    assert df["crop"].tolist() == [1.0] * 3 and df["Crop"].tolist() == [0.0, 1002.0, 2004.0]


def test_two_sample_rasters_with_one_stem_name_the_cli_fix(raster, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_raster(tmp_path / d / "scene.tif", coord_image(100, 120, 1))
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0])
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--sample", str(tmp_path / "a" / "scene.tif"),
                  "--sample", str(tmp_path / "b" / "scene.tif"), "--output-property", "pred:float32",
                  "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 1 and "--sample NAME=RASTER" in result.output, result.output


def test_stac_assets_of_one_item_in_different_crss_land_on_the_first_assets_grid(tmp_path):
    """B04 in UTM, B08 the same pixels warped to Web Mercator: B08 is warped back per window onto B04's grid."""
    import rasterio
    from rasterio.warp import calculate_default_transform, reproject

    img = coord_image(60, 60, 1)  # the row number
    transform = from_origin(X0, Y0, RES, RES)
    write_raster(tmp_path / "B04.tif", img, transform=transform)
    bounds = rasterio.transform.array_bounds(60, 60, transform)
    mt, mw, mh = calculate_default_transform("EPSG:32633", "EPSG:3857", 60, 60, *bounds)
    merc = np.zeros((1, mh, mw), np.float32)
    reproject(img + 1000, merc, src_transform=transform, src_crs="EPSG:32633", dst_transform=mt,
              dst_crs="EPSG:3857")
    write_raster(tmp_path / "B08.tif", merc, crs="EPSG:3857", transform=mt)
    item = _item("a", {"B04": str(tmp_path / "B04.tif"), "B08": str(tmp_path / "B08.tif")})
    src = open_source(item, bands=["B04", "B08"])
    assert src.grid.crs.to_epsg() == 32633 and src.grid.transform.a == RES
    col, row = ~src.grid.transform * (X0, Y0)
    data, _ = src.read(Window(int(col), int(row), 60, 60))
    assert np.array_equal(data[0], img[0])
    assert np.abs(data[1, 5:55, 5:55] - (img[0, 5:55, 5:55] + 1000)).max() <= 1


def test_layout_named_for_a_model_whose_inputs_are_not_properties_names_them(tmp_path):
    """The batch sent was empty, and ONNX Runtime's 'missing inputs' came back advising --tile/--overlap."""
    features = _points_file(tmp_path / "pts.gpkg", a=[1.0, 2.0, 3.0], b=[4.0, 5.0, 6.0])
    result = _cli(features, "-m", _stacked_model(tmp_path / "m.onnx"), "--layout", "named", "--output-property",
                  "p=y:float32", "-o", str(tmp_path / "o.gpkg"))
    assert result.exit_code == 1 and "['x']" in result.output and "--tile" not in result.output, result.output
    assert "--layout stacked" in result.output


def test_an_input_type_override_naming_no_input_is_refused(raster, tmp_path):
    """--input-type-override zz:float64 was silently ignored; a real input name still works."""
    from onnx_models import linear_1x1

    image = raster(coord_image(40, 48, 2))
    model = linear_1x1(tmp_path / "m.onnx", [1.0, 1000.0])
    args = [image, "-m", model, "--output-band", "y:float32", "--tile", "16"]
    result = _predict(*args, "--input-type-override", "zz:float64", "-o", tmp_path / "o.tif")
    assert result.exit_code == 1 and "input_type_override names ['zz']" in result.output, result.output
    assert not (tmp_path / "o.tif").exists()
    import onnx

    name = onnx.load(model).graph.input[0].name
    result = _predict(*args, "--input-type-override", f"{name}:float32", "-o", tmp_path / "p.tif")
    assert result.exit_code == 0, result.output
