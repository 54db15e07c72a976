"""Outputs that GIS tools show right (issue 18, item 4): class colours and category names, the model's own dtype
when no output band is declared, and nodata on imported COGs."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from onnx_models import argmax_classes
from tilecast.cli import main
from tilecast.errors import SpecError
from tilecast.spec import (
    PALETTES,
    OutputBand,
    categories_xml,
    category_names,
    parse_color,
    parse_colors,
    with_default_colors,
)

LANDSAT = Path(__file__).resolve().parents[1] / "models" / "landsat_landcover.onnx"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rgb(hex_color: str) -> tuple[int, int, int, int]:
    return (*(int(hex_color[i : i + 2], 16) for i in (1, 3, 5)), 255)


@pytest.fixture
def two_band(raster):
    return raster(np.random.default_rng(0).random((2, 50, 40)).astype("float32"))


def test_class_maps_get_the_default_palette(tmp_path, two_band):
    onnx = argmax_classes(tmp_path / "a.onnx", 2)
    out = tmp_path / "c.tif"
    res = run("predict", two_band, "-m", onnx, "--tile", "16", "--output-band", "cls:uint8", "--classes",
              "3=low,7=high", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        cmap = ds.colormap(1)
    assert cmap[3] == rgb(PALETTES["tab10"][0]) and cmap[7] == rgb(PALETTES["tab10"][1])


def test_colors_flag_explicit_and_palette(tmp_path, two_band):
    onnx = argmax_classes(tmp_path / "a.onnx", 2)
    out = tmp_path / "c.tif"
    res = run("predict", two_band, "-m", onnx, "--tile", "16", "--output-band", "cls:uint8", "--colors",
              "0:#102030,1:#a0b0c0", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.colormap(1)[0] == (16, 32, 48, 255) and ds.colormap(1)[1] == (160, 176, 192, 255)
        np.testing.assert_array_equal(ds.read(1), rasterio.open(two_band).read().argmax(0))
    res = run("predict", two_band, "-m", onnx, "--tile", "16", "--output-band", "cls:uint8", "--classes", "a,b",
              "--colors", "set1", "-o", out, "-q", "--overwrite")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.colormap(1)[1] == rgb(PALETTES["set1"][1])


def test_float_outputs_and_bands_without_classes_get_no_palette():
    assert with_default_colors(OutputBand("p", np.dtype("float32"), 0, ((0, "a"),))).colors is None
    assert with_default_colors(OutputBand("c", np.dtype("uint8"))).colors is None
    given = OutputBand("c", np.dtype("uint8"), 0, ((0, "a"),), ((0, (1, 2, 3)),))
    assert with_default_colors(given) is given


def test_colour_parsing():
    assert parse_color("#1f77b4") == (31, 119, 180, 255) == parse_color("1f77b4") == parse_color("31,119,180")
    assert parse_color("#1f77b480") == (31, 119, 180, 128)
    assert parse_colors("#000000,#ffffff", [5, 9]) == {5: (0, 0, 0, 255), 9: (255, 255, 255, 255)}
    assert list(parse_colors("tab10")) == list(range(10))
    for bad in ("zzzzzz", "#12345", "300,0,0", "0:#ff0000,#00ff00", "", "1:nope"):
        with pytest.raises(SpecError):
            parse_colors(bad)
    with pytest.raises(SpecError, match="one colour per class"):
        parse_colors("#000000", [1, 2])


def test_category_names_follow_gdal_convention():
    assert category_names([(1, "water"), (3, "forest")]) == ["", "water", "", "forest"]
    assert category_names(None) == [] and category_names([(-1, "x")]) == []
    bands = [OutputBand("lc", np.dtype("uint8"), 0, ((0, "a&b"), (2, "c"))), OutputBand("p", np.dtype("uint8")),
             OutputBand("v", np.dtype("uint8"), 1, ((0, "never"),))]
    root = ET.fromstring(categories_xml(bands))
    found = {b.get("band"): [c.text or "" for c in b.iter("Category")] for b in root.iter("PAMRasterBand")}
    assert found == {"1": ["a&b", "", "c"]}
    assert categories_xml([OutputBand("p", np.dtype("float32"))]) is None


def test_undeclared_mixed_outputs_keep_the_float_width(tmp_path, raster):
    """The demo model returns int64 classes and float32 probabilities; without --output-band the file was float64."""
    img = (np.random.default_rng(3).random((5, 40, 48)) * 255).astype("uint8")
    src = raster(img, descriptions=["B1", "B2", "B3", "B4", "B5"])
    out = tmp_path / "all.tif"
    res = run("predict", src, "-m", LANDSAT, "--tile", "32", "--overlap", "4", "-o", out, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert set(ds.dtypes) == {"float32"} and ds.count == 8
        data = ds.read()
    np.testing.assert_array_equal(data[0], data[1:].argmax(0) + 1)  # landcover = argmax of the probabilities + 1
    np.testing.assert_allclose(data[1:].sum(0), 1, atol=1e-5)


def test_imported_cog_carries_nodata(tmp_path, raster):
    src = raster(np.random.default_rng(0).random((1, 40, 40)).astype("float32"))
    res = run("export", "image", src, "--patch", "10", "-o", tmp_path / "e", "-q")
    assert res.exit_code == 0, res.output
    files = sorted((tmp_path / "e").glob("*.tfrecord.gz"))
    mixer = next((tmp_path / "e").glob("*-mixer.json"))
    res = run("import", *files, "--mixer", mixer, "-o", tmp_path / "f.tif", "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "f.tif") as ds:
        assert np.isnan(ds.nodata)
        np.testing.assert_array_equal(ds.read(1), rasterio.open(src).read(1))
    res = run("import", *files, "--mixer", mixer, "-o", tmp_path / "i.tif", "-q", "--dtype", "int16")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "i.tif") as ds:
        assert ds.nodata == np.iinfo("int16").min
    res = run("import", *files, "--mixer", mixer, "-o", tmp_path / "n.tif", "-q", "--nodata", "-1")
    with rasterio.open(tmp_path / "n.tif") as ds:
        assert ds.nodata == -1


def test_gdal_reads_the_category_sidecar(tmp_path, raster):
    """What the GeoTIFF sink writes beside a class map (``OUTPUT.tif.aux.xml``) is what GDAL reports: a VRT copy,
    which serialises each band's CategoryNames as GDAL read them, lists the names."""
    import rasterio.shutil

    tif = Path(raster(np.array([[[0, 1], [2, 1]]], "uint8"), tiled=False))
    bands = [OutputBand("lc", np.dtype("uint8"), 0, ((0, "water"), (2, "forest & shrub")))]
    Path(f"{tif}.aux.xml").write_text(categories_xml(bands))
    rasterio.shutil.copy(tif, tmp_path / "copy.vrt", driver="VRT")
    root = ET.parse(tmp_path / "copy.vrt").getroot()
    names = [c.text or "" for c in root.iter("Category")]
    assert names == ["water", "", "forest & shrub"]
