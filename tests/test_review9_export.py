"""Review 9 of ``tilecast export`` and ``tilecast card``: defects found by using them like a demanding user."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin
from tests.conftest import coord_image, write_raster
from tests.onnx_models import linear_1x1

from tilecast.card import build_card, card_path, read_card_file, write_card
from tilecast.card.deepness import card_from_deepness
from tilecast.cli import main
from tilecast.errors import InputError, ModelLoadError, SpecError, TilecastWarning
from tilecast.export.tfrecord import ShardedWriter, iter_records
from tilecast.spec import OutputBand

# ---- tilecast card ---------------------------------------------------------------------------------------------


def _model_with_card(tmp_path, **extra_props):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    card = build_card(name="lin", bands=["a", "b"], input_tile_size=16)
    card.properties.update(extra_props)
    card.item["links"] = [{"rel": "license", "href": "https://example.org/license"}]
    write_card(card, path, embed=False)
    return path


def test_updating_a_card_keeps_the_fields_tilecast_does_not_set(tmp_path):
    """``tilecast card MODEL --tile 32`` edits the card in place: a hand-written card's licence, hyperparameters,
    links and ``tilecast:tile_multiple`` are not silently dropped by the rewrite."""
    path = _model_with_card(tmp_path, **{"license": "CC-BY-4.0", "mlm:hyperparameters": {"lr": 0.01},
                                         "description": "two-band linear model", "tilecast:tile_multiple": 8})
    r = CliRunner().invoke(main, ["card", path, "--tile", "32", "--no-check", "--no-embed"])
    assert r.exit_code == 0, r.output
    item = json.loads(card_path(path).read_text())
    p = item["properties"]
    assert p["tilecast:tile_size"] == [32, 32]
    assert p["license"] == "CC-BY-4.0" and p["mlm:hyperparameters"] == {"lr": 0.01}
    assert p["description"] == "two-band linear model" and p["tilecast:tile_multiple"] == 8
    assert item["links"] == [{"rel": "license", "href": "https://example.org/license"}]


def test_no_argmax_still_removes_the_argmax_on_update(tmp_path):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    runner = CliRunner()
    r = runner.invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", "--output-band", "c:uint8", "--argmax",
                             "--no-check", "--no-embed"])
    assert r.exit_code == 0, r.output
    assert "tilecast:outputs" in json.loads(card_path(path).read_text())["properties"]
    r = runner.invoke(main, ["card", path, "--no-argmax", "--no-check", "--no-embed"])
    assert r.exit_code == 0, r.output
    assert "argmax" not in json.dumps(json.loads(card_path(path).read_text())["properties"].get("tilecast:outputs"))


@pytest.mark.parametrize("bad", ["{not json", "[1, 2]", "v2"])
def test_a_card_that_cannot_be_updated_is_replaced_with_overwrite(tmp_path, bad):
    """The errors for an unreadable sidecar say to rewrite it with ``tilecast card``, which read it first and failed
    the same way: ``--overwrite`` replaces it, and the error without it names ``--overwrite``."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    if bad == "v2":
        card = build_card(name="m", bands=["a", "b"], input_tile_size=8)
        card.item["stac_extensions"] = ["https://stac-extensions.github.io/mlm/v2.0.0/schema.json"]
        bad = card.to_json()
    card_path(path).write_text(bad)
    args = ["card", path, "--bands", "a,b", "--tile", "16", "--no-check", "--no-embed"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "--overwrite" in r.output
    assert card_path(path).read_text() == bad
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output
    assert read_card_file(card_path(path)).to_params().params["input_tile_size"] == (16, 16)


def test_overwrite_starts_afresh(tmp_path):
    path = _model_with_card(tmp_path, license="CC-BY-4.0")
    r = CliRunner().invoke(main, ["card", path, "--bands", "x,y", "--tile", "16", "--overwrite", "--no-check",
                                  "--no-embed"])
    assert r.exit_code == 0, r.output
    p = json.loads(card_path(path).read_text())["properties"]
    assert "license" not in p and [b for i in p["mlm:input"] for b in i["bands"]] == ["x", "y"]


def test_card_help_says_it_edits_the_card_in_place():
    r = CliRunner().invoke(main, ["card", "--help"])
    assert r.exit_code == 0
    assert "in place" in r.output


@pytest.mark.parametrize("colors", ["0:#ff000080,1:#00ff00", "ff000000,00ff00"])
def test_a_colour_with_alpha_is_refused_not_silently_dropped(tmp_path, colors):
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", "--output-band", "c:uint8",
                                  "--classes", "x,y", "--colors", colors, "--no-check", "--no-embed"])
    assert r.exit_code != 0
    assert "alpha" in r.output and "color_hint" in r.output
    assert not card_path(path).exists()


def test_an_opaque_rrggbbaa_colour_is_kept():
    band = OutputBand("c", np.dtype("uint8"), 0, ((0, "x"),), ((0, (255, 0, 0, 255)),))
    card = build_card(name="m", bands=["a"], input_tile_size=8, output_bands=[band])
    assert card.outputs[0]["classification:classes"][0]["color_hint"] == "FF0000"


def test_build_card_refuses_a_translucent_class_colour():
    band = OutputBand("c", np.dtype("uint8"), 0, ((0, "x"),), ((0, (255, 0, 0, 128)),))
    with pytest.raises(SpecError, match="alpha"):
        build_card(name="m", bands=["a"], input_tile_size=8, output_bands=[band])


def _deepness(**meta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return card_from_deepness({k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}, None)


def _class_names(card):
    return card.to_params().params["output_bands"]["class"]["classes"]


@pytest.mark.parametrize("text", ["background, road, building", "{'0': 'background', '1': 'road', '2': 'building'}",
                                  "['background', 'road', 'building']"])
def test_deepness_class_names_written_as_plain_text_are_read(text):
    assert _class_names(_deepness(tiles_size=256, class_names=text)) == {0: "background", 1: "road", 2: "building"}


@pytest.mark.parametrize("value", [5, "{broken", ""])
def test_unreadable_deepness_class_names_name_the_field(value):
    if value == "":
        assert _deepness(tiles_size=256, class_names=value).to_params().params["output_bands"]["class"].get(
            "classes") is None
        return
    with pytest.raises(SpecError, match="class_names"):
        _deepness(tiles_size=256, class_names=value)


def _versioned(tmp_path, version):
    card = build_card(name="m", bands=["a"], input_tile_size=8)
    card.item["stac_extensions"] = [f"https://stac-extensions.github.io/mlm/v{version}/schema.json"]
    path = tmp_path / "card.json"
    path.write_text(card.to_json())
    return path


def test_a_card_of_another_mlm_major_version_is_refused_naming_it(tmp_path):
    with pytest.raises(ModelLoadError, match=r"v2\.0\.0"):
        read_card_file(_versioned(tmp_path, "2.0.0"))


def test_a_card_of_a_newer_mlm_minor_version_warns_naming_it(tmp_path):
    with pytest.warns(TilecastWarning, match=r"v1\.9\.0"):
        read_card_file(_versioned(tmp_path, "1.9.0"))


def test_model_load_checks_the_card_version(tmp_path):
    import tilecast

    path = linear_1x1(tmp_path / "lin.onnx", [1.0])
    card = build_card(name="m", bands=["a"], input_tile_size=8)
    card.item["stac_extensions"] = ["https://stac-extensions.github.io/mlm/v3.1.0/schema.json"]
    card_path(path).write_text(card.to_json())
    with pytest.raises(ModelLoadError, match=r"v3\.1\.0"):
        tilecast.Model.load(path)


@pytest.mark.parametrize("version", ["1.4.0", "1.3.0"])
def test_a_card_of_a_known_mlm_version_loads_quietly(tmp_path, version):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_card_file(_versioned(tmp_path, version))


# ---- tilecast export -------------------------------------------------------------------------------------------


def test_more_than_100000_shards_still_sort_in_record_order(tmp_path):
    """Shard names are zero-padded wide enough for every shard: name order is record order past 99,999 shards."""
    n = 100_002
    w = ShardedWriter(tmp_path, "p", compressed=False, max_file_size=1)
    for i in range(n):
        w.write(i.to_bytes(4, "little"))
    files = w.close()
    assert len(files) == n
    names = sorted(f.name for f in tmp_path.glob("p-*.tfrecord"))
    assert names == [f.name for f in files]
    assert names[0] == "p-000000.tfrecord" and names[-1] == "p-100001.tfrecord"
    for k in (0, 99_999, 100_000, n - 1):
        assert [int.from_bytes(r, "little") for r in iter_records(tmp_path / names[k])] == [k]


def _label_raster(tmp_path):
    img = write_raster(tmp_path / "img.tif", coord_image(20, 30))
    labels = np.zeros((1, 20, 30), np.uint8)
    labels[0, 5:15, 5:25] = 1
    lab = write_raster(tmp_path / "lab.tif", labels, nodata=0)
    return str(img), str(lab)


@pytest.mark.parametrize(("first", "second"), [
    ("out/", ["--splits", "train=0.5,test=0.5", "--split-block", "4"]),
    ("s.tfrecord.gz", ["-o", "s.tfrecord"]),
])
def test_a_sample_export_does_not_replace_another_exports_spec_without_overwrite(tmp_path, first, second):
    """Exports with other file names (other splits, other compression) share the spec sidecar: replacing it
    silently left the earlier export's files without their spec."""
    img, lab = _label_raster(tmp_path)
    base = ["export", "patches", img, "--label-raster", lab, "--patch", "3", "-q"]
    r = CliRunner().invoke(main, [*base, "-o", str(tmp_path / first)])
    assert r.exit_code == 0, r.output
    spec = tmp_path / ("out/spec.json" if first.endswith("/") else "s.spec.json")
    before = spec.read_bytes()
    args = [*base, "-o", str(tmp_path / first)] if second[0] != "-o" else [*base, "-o", str(tmp_path / second[1])]
    if second[0] != "-o":
        args += second
    r = CliRunner().invoke(main, args)
    assert r.exit_code != 0 and "--overwrite" in r.output and spec.name in r.output, r.exception
    assert spec.read_bytes() == before
    r = CliRunner().invoke(main, [*args, "--overwrite"])
    assert r.exit_code == 0, r.output


def test_image_export_bounds_in_another_crs(tmp_path):
    """``--bounds`` in lat/lon on a UTM image: the error said to set bounds_crs, which the export did not take."""
    from rasterio.warp import transform_bounds
    img = write_raster(tmp_path / "img.tif", coord_image(40, 40))  # UTM 33N, 10 m pixels from (500000, 4600000)
    # pixels 8..24 (x) and 4..20 (y), shrunk by a metre so no neighbouring pixel is touched
    utm = (500000 + 8 * 10 + 1, 4600000 - 20 * 10 + 1, 500000 + 24 * 10 - 1, 4600000 - 4 * 10 - 1)
    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", *utm)
    inner = transform_bounds("EPSG:4326", "EPSG:32633", *lonlat, densify_pts=21)
    assert inner[0] > 500000 + 80 and inner[2] < 500000 + 240  # still inside the same pixels
    r = CliRunner().invoke(main, ["export", "image", img, "--patch", "8", "-o", str(tmp_path / "a"), "-q",
                                  "--bounds", *map(str, lonlat), "--bounds-crs", "EPSG:4326"])
    assert r.exit_code == 0, r.output
    mixer = json.loads((tmp_path / "a" / "img-mixer.json").read_text())
    assert mixer["projection"]["affine"]["doubleMatrix"][2::3] == [500080.0, 4599960.0]
    assert mixer["patchesPerRow"] == 2 and mixer["totalPatches"] == 4
    r = CliRunner().invoke(main, ["export", "image", img, "--patch", "8", "-o", str(tmp_path / "c"), "-q",
                                  "--bounds-crs", "EPSG:4326"])
    assert r.exit_code == 2 and "--bounds-crs" in r.output
    with pytest.raises(InputError, match="bounds or window"):
        from rasterio.windows import Window

        from tilecast.export import export_image

        export_image(img, tmp_path / "b", 8, bounds=utm, window=Window(0, 0, 8, 8))


@pytest.mark.parametrize("prefix", ["sub/x", "", "..", "a\\b"])
def test_an_image_export_prefix_that_is_not_a_file_name_is_refused(tmp_path, prefix):
    """``--prefix sub/x`` ended in a raw FileNotFoundError traceback; ``--prefix ''`` was silently replaced."""
    img = write_raster(tmp_path / "img.tif", coord_image(16, 16))
    r = CliRunner().invoke(main, ["export", "image", img, "--patch", "8", "-o", str(tmp_path / "out"), "-q",
                                  "--prefix", prefix])
    assert r.exit_code == 1 and "OutputError" in r.output and "prefix" in r.output, r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["image", "patches", "samples"])
def test_a_refused_export_leaves_no_new_folder(tmp_path, kind):
    """The command created the output folder before checking anything: every typo left a stray empty folder."""
    img, _ = _label_raster(tmp_path)
    out = tmp_path / "new" / "out"
    if kind == "image":
        args = ["export", "image", img, "--patch", "64", "-o", str(out)]  # larger than the image
    else:
        far = write_raster(tmp_path / "far.tif", np.ones((1, 4, 4), np.uint8), nodata=0,
                           transform=from_origin(0, 0, 10, 10))  # labels that miss the image
        args = ["export", kind, img, "--label-raster", far, *(["--patch", "3"] if kind == "patches" else []),
                "-o", f"{out}/"]
    r = CliRunner().invoke(main, [*args, "-q"])
    assert r.exit_code == 1, r.output
    assert "Error" in r.output and not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()
    r = CliRunner().invoke(main, [*args[:-1], str(tmp_path / "kept"), "-q"] if kind == "image"
                           else [*args[:-1], f"{tmp_path / 'kept'}/", "-q"])
    assert r.exit_code == 1 and (tmp_path / "kept").is_dir()  # a folder that was there stays


@pytest.mark.parametrize("kind", ["image", "patches"])
def test_a_nan_default_value_for_integer_bands_is_a_clear_error(tmp_path, kind):
    """``--default-value nan`` on a uint16 image was a raw ValueError traceback."""
    img = write_raster(tmp_path / "img.tif", (coord_image(16, 16) % 1000).astype(np.uint16))
    lab = write_raster(tmp_path / "lab.tif", np.ones((1, 16, 16), np.uint8), nodata=0)
    extra = ["--label-raster", lab] if kind == "patches" else []
    r = CliRunner().invoke(main, ["export", kind, img, *extra, "--patch", "4", "-o", str(tmp_path / "out"), "-q",
                                  "--default-value", "nan"])
    assert r.exit_code == 1 and "SpecError" in r.output and "nan" in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_an_infinite_default_value_is_clamped_to_the_band_range(tmp_path):
    """Earth Engine clamps defaultValue to the band's range: inf is the largest uint16 (was an OverflowError)."""
    from tilecast.export import export_image
    from tilecast.export.tfrecord import decode_example

    data = (coord_image(8, 8) % 1000).astype(np.uint16)
    img = write_raster(tmp_path / "img.tif", data)
    res = export_image(img, tmp_path / "out", 8, kernel=2, default_value=float("inf"))
    ex = [decode_example(r) for r in iter_records(res.files["all"][0])]
    for i, band in enumerate(("b1", "b2")):
        values = ex[0][band].reshape(10, 10)
        assert (values[0] == 65535).all() and (values[:, 0] == 65535).all() and (values[-1] == 65535).all()
        assert (values[1:9, 1:9] == data[i]).all()


@pytest.mark.parametrize(("kind", "flag", "value"), [
    ("samples", "--per-class", "1=abc"), ("samples", "--per-class", "-5"), ("samples", "--per-class", "1=5,2"),
    ("image", "--array", "sp"), ("image", "--array", "=b1,b2"),
])
def test_malformed_export_options_are_usage_errors(tmp_path, kind, flag, value):
    """``--per-class 1=abc`` was a raw ValueError traceback; ``--array sp`` advised ``tensor_depths={'sp': 0}``."""
    img, lab = _label_raster(tmp_path)
    extra = ["--label-raster", lab] if kind == "samples" else ["--patch", "4"]
    r = CliRunner().invoke(main, ["export", kind, img, *extra, "-o", str(tmp_path / "out.tfrecord.gz"), "-q",
                                  flag, value])
    assert r.exit_code == 2 and f"Invalid value for {flag}" in r.output, r.output


@pytest.mark.parametrize("per_class", [-5, {1: -5}])
def test_a_negative_per_class_count_is_named(tmp_path, per_class):
    """A negative count silently selected nothing and the error blamed the labels' position."""
    from tilecast.export import export_samples

    img, lab = _label_raster(tmp_path)
    with pytest.raises(InputError, match="per_class"):
        export_samples(img, tmp_path / "s.csv", label_raster=lab, per_class=per_class)


@pytest.mark.parametrize("kind", ["image", "patches"])
def test_an_interrupted_overwrite_keeps_the_earlier_export(tmp_path, kind):
    """Ctrl-C in the middle of ``--overwrite``: the earlier export is untouched and no temporary file is left."""
    from tilecast.export import export_image, export_samples

    img, lab = _label_raster(tmp_path)
    out = tmp_path / "out"

    def run(**kw):
        if kind == "image":
            return export_image(img, out, 4, max_file_size=200, **kw)
        return export_samples(img, f"{out}/", label_raster=lab, patch=3, max_file_size=200, chunk=4, **kw)

    run()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert len(before) > 3

    def interrupt(done, total, pixels):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(overwrite=True, progress=interrupt)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(("output", "options", "named"), [
    ("s.csv", {"max_file_size": 1000}, "max_file_size"),
    ("s.parquet", {"compressed": False}, "compressed"),
    ("s.tfrecord.gz", {"split_block": 8}, "split_block"),
    ("s.tfrecord.gz", {"stratify_splits": True}, "stratify_splits"),
    ("dir/", {"file_format": "csv"}, "folder"),
    ("s.tfrecord.gz", {"file_format": "npy"}, "npy"),
])
def test_export_options_that_would_be_ignored_are_refused(tmp_path, output, options, named):
    """A CSV export with max_file_size, split_block without splits... were silently ignored; a folder with
    file_format='csv' wrote a file named 'samplesNone'."""
    from tilecast.errors import OutputError
    from tilecast.export import export_samples

    img, lab = _label_raster(tmp_path)
    with pytest.raises((InputError, OutputError), match=named):
        export_samples(img, f"{tmp_path}/{output}", label_raster=lab, **options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "lab.tif"]


def test_label_name_with_vector_labels_is_refused(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    img, _ = _label_raster(tmp_path)
    gpd.GeoDataFrame({"cls": [1]}, geometry=[Point(500015, 4599985)], crs="EPSG:32633").to_file(tmp_path / "p.gpkg")
    r = CliRunner().invoke(main, ["export", "samples", img, "--labels", str(tmp_path / "p.gpkg"), "--label-field",
                                  "cls", "--label-name", "y", "-o", str(tmp_path / "s.csv"), "-q"])
    assert r.exit_code == 1 and "--label-name" in r.output, r.output
    r = CliRunner().invoke(main, ["export", "samples", img, "--labels", str(tmp_path / "p.gpkg"), "--label-field",
                                  "cls", "-o", str(tmp_path / "s.csv"), "-q"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == "b1,b2,cls"


@pytest.mark.parametrize("args", [["image", "--bands", "1,1"], ["image", "--array", "b2=b1", "--tensor-depth", "b2=1"],
                                  ["samples", "--bands", "b1,1"]])
def test_two_bands_under_one_feature_name_are_refused(tmp_path, args):
    """``--bands 1,1`` (or an array named after another band) wrote one feature where two were asked for; a CSV
    got a single column."""
    img, lab = _label_raster(tmp_path)
    kind, *rest = args
    extra = ["--patch", "4"] if kind == "image" else ["--label-raster", lab]
    r = CliRunner().invoke(main, ["export", kind, img, *extra, *rest, "-o", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 1 and "InputError" in r.output and "once" in r.output, r.output
    assert not (tmp_path / "out").exists()


def test_a_nan_fill_value_is_written_as_valid_json_and_read_back(tmp_path):
    """``--fill-value nan`` wrote a bare NaN, which is not JSON (STAC tools and browsers refuse the card)."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", "--fill-value", "nan",
                                  "--no-check", "--no-embed"])
    assert r.exit_code == 0, r.output

    def refuse(constant):
        raise ValueError(constant)

    item = json.loads(card_path(path).read_text(), parse_constant=refuse)
    assert item["properties"]["tilecast:fill_value"] == "nan"
    assert np.isnan(read_card_file(card_path(path)).to_params().params["fill_value"])


@pytest.mark.parametrize(("flag", "value", "match"), [("--crs", "EPSG:999999", "EPSG:999999"),
                                                     ("--gsd-tolerance", "-1", "gsd_tolerance")])
def test_card_values_that_cannot_work_are_refused_when_written(tmp_path, flag, value, match):
    """An unknown CRS or a negative GSD tolerance was written into the card and only failed (or refused every
    raster) when the model was used."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", flag, value, "--no-check",
                                  "--no-embed"])
    assert r.exit_code == 1 and match in r.output, r.output
    assert not card_path(path).exists()


def test_embed_on_a_model_that_cannot_hold_a_card_writes_nothing(tmp_path):
    """``--embed`` on a model format without room for a card wrote the sidecar, then failed."""
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    card = build_card(name="m", bands=["a"], input_tile_size=8)
    with pytest.raises(SpecError, match="embed"):
        write_card(card, model, embed=True)
    assert not card_path(model).exists()


def test_a_text_property_is_named_as_a_property_not_the_label_field(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    from tilecast.export import export_samples

    img, _ = _label_raster(tmp_path)
    labels = gpd.GeoDataFrame({"cls": [1], "name": ["a"]}, geometry=[Point(500055, 4599945)], crs="EPSG:32633")
    with pytest.raises(InputError, match="the property 'name'"):
        export_samples(img, tmp_path / "s.csv", labels=labels, label_field="cls", properties=["name"])


def test_polygons_that_give_no_sample_are_reported(tmp_path):
    """A polygon smaller than a pixel, or outside the raster, gave no sample without a word (points outside the
    raster are an error or a warning)."""
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    from tilecast.export import export_samples

    img, _ = _label_raster(tmp_path)  # 30 x 20 pixels of 10 m from (500000, 4600000)
    polys = [box(500101, 4599896, 500104, 4599899),  # inside one pixel, away from its centre
             box(400000, 4000000, 400100, 4000100),  # far outside
             box(500200, 4599860, 500260, 4599900)]  # 6 x 4 pixels
    labels = gpd.GeoDataFrame({"cls": [1, 2, 3]}, geometry=polys, crs="EPSG:32633")
    with pytest.warns(TilecastWarning, match="2 of 3 label polygons"):
        res = export_samples(img, tmp_path / "s.csv", labels=labels, label_field="cls")
    assert res.count == 24
    rows = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert (rows[:, 2] == 3).all()
    assert sorted(zip(rows[:, 0], rows[:, 1], strict=True)) == [(r, c) for r in range(10, 14) for c in range(20, 26)]


def test_labels_without_a_value_are_skipped_not_exported_as_nan(tmp_path):
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import Point

    from tilecast.export import export_samples

    img, _ = _label_raster(tmp_path)
    points = [Point(500105, 4599905), Point(500205, 4599805), Point(500255, 4599855)]
    labels = gpd.GeoDataFrame({"cls": [1.0, np.nan, 2.0]}, geometry=points, crs="EPSG:32633")
    with pytest.warns(TilecastWarning, match="1 of 3 labels have no 'cls' value"):
        res = export_samples(img, tmp_path / "s.csv", labels=labels, label_field="cls")
    rows = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)
    assert res.count == 2 and rows.tolist() == [[9, 10, 1], [14, 25, 2]]


@pytest.mark.parametrize(("extra", "match"), [(["--colors", "ff0000,00ff00"], "--classes"),
                                               (["--classes", "a,b", "--colors", "0:#ff0000,5:#00ff00"], r"\[5\]")])
def test_colours_that_a_card_cannot_keep_are_refused(tmp_path, extra, match):
    """``--colors`` without classes, or for a value that is not a class, was dropped without a word."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", "--output-band", "c:uint8", *extra,
                                  "--no-check", "--no-embed"])
    assert r.exit_code == 1 and "--colors" in r.output, r.output
    assert re.search(match, r.output)
    assert not card_path(path).exists()


@pytest.mark.parametrize("scaling", ["z-score:100:-20", "scale:-255"])
def test_the_card_check_takes_a_negative_scale(tmp_path, scaling):
    """A negative stddev or scale (a sign flip) made the synthetic-tile check crash with numpy's ValueError."""
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    r = CliRunner().invoke(main, ["card", path, "--bands", "a,b", "--tile", "16", "--scaling", scaling, "--no-embed"])
    assert r.exit_code == 0, r.output
    assert "checked one 16 x 16 tile" in r.output
