"""Review of the public Python API (round 9): parameters given to ``Model`` and ``Model.with_options`` are read the
same way, a misspelt parameter is a tilecast error naming the known ones, and ``predict_image`` checks its region
before handing it to a library."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import numpy as np
import pytest
import rasterio

import tilecast
from tilecast import Model


def _double(x: np.ndarray) -> np.ndarray:
    return x[:, :1] * 2  # NCHW: the first band, doubled


def _model(**params):
    params = {"layout": "NCHW", "input_tile_size": 8, **params}
    return Model.from_callable(_double, **params)


# ---- misspelt and unknown parameters ------------------------------------------------------------------------------


def test_a_misspelt_model_parameter_is_a_spec_error_naming_the_known_ones():
    with pytest.raises(tilecast.SpecError, match=r"input_tile_szie.*input_tile_size"):
        _model(input_tile_szie=16)


def test_a_misspelt_with_options_parameter_is_a_spec_error():
    with pytest.raises(tilecast.SpecError, match=r"bacth_size.*batch_size"):
        _model().with_options(bacth_size=4)


def test_overlap_mode_alone_in_with_options_is_refused():
    """It says how to read input_overlap_size; alone, it would halve the per-edge overlap already stored."""
    with pytest.raises(tilecast.SpecError, match=r"overlap_mode.*input_overlap_size"):
        _model(input_overlap_size=2).with_options(overlap_mode="total")
    assert tuple(_model().with_options(input_overlap_size=4, overlap_mode="total").spec.geometry.overlap) == (2, 2)


def test_a_model_built_from_a_path_says_how_to_open_it(tmp_path):
    with pytest.raises(tilecast.SpecError, match=r"Model.load\(path\)"):
        Model(str(tmp_path / "unet.onnx"), input_tile_size=256)


# ---- with_options reads values as the constructor does -----------------------------------------------------------


def test_with_options_reads_output_bands_like_the_constructor(raster, tmp_path):
    data = np.arange(2 * 12 * 20, dtype="float32").reshape(2, 12, 20)
    path = raster(data)
    for declared in ({"twice": "float64"}, ["twice:float64"], "twice:float64"):
        model = _model(output_bands={"x": "float32"}).with_options(output_bands=declared)
        assert model.spec.output_bands == Model.from_callable(_double, layout="NCHW", input_tile_size=8,
                                                              output_bands=declared).spec.output_bands
        out = model.predict_image(path).to_geotiff(tmp_path / f"o{len(str(declared))}.tif")
        with rasterio.open(out) as ds:
            assert ds.descriptions == ("twice",) and ds.dtypes == ("float64",)
            np.testing.assert_array_equal(ds.read(1), data[0] * 2)
    assert _model(output_bands={"x": "float32"}).with_options(output_bands=None).spec.output_bands == ()


def test_with_options_reads_resolution_overrides_shapes_and_properties():
    model = _model().with_options(resolution=20, input_type_override={"b1": "float32"}, input_shapes={"a": [6]},
                                  input_properties=["gain"], bands=["b2", "b1"])
    spec = model.spec
    assert spec.resolution == (20.0, 20.0)
    assert spec.input_type_override == {"b1": np.dtype("float32")}
    assert spec.input_shapes == {"a": (6,)} and spec.input_properties == ("gain",) and spec.bands == ("b2", "b1")
    assert _model(resolution=10).with_options(resolution=None).spec.resolution is None
    with pytest.raises(tilecast.SpecError, match="resolution must be a positive"):
        _model().with_options(resolution=-5)
    with pytest.raises(tilecast.SpecError, match="not a dtype"):
        _model().with_options(input_type_override={"b1": "nonsense"})


def test_with_options_batch_size_is_kept_by_an_automatic_tile(raster):
    """An auto model chooses the batch with the tile unless one is given: a batch given later must be kept too."""
    path = raster(np.zeros((1, 64, 64), "float32"))
    given = _model(input_tile_size="auto", batch_size=2)
    later = _model(input_tile_size="auto").with_options(batch_size=2)
    assert later.auto_tile == given.auto_tile and later.spec.batch_size == 2
    assert later.predict_image(path).model.tile_choice.batch == given.predict_image(path).model.tile_choice.batch == 2


def test_with_options_output_tile_on_an_automatic_tile_is_refused_as_in_the_constructor():
    """resolve_tile replaces the geometry with auto's choice: an output tile given later was silently dropped."""
    with pytest.raises(tilecast.SpecError, match="output tile to follow the input tile"):
        _model(input_tile_size="auto", output_tile_size=4)
    with pytest.raises(tilecast.SpecError, match="output tile to follow the input tile"):
        _model(input_tile_size="auto").with_options(output_tile_size=4)


# ---- predict_image ------------------------------------------------------------------------------------------------


def test_predict_image_engine_hint_takes_engine_values():
    hint = typing.get_type_hints(Model.predict_image)["engine"]
    assert tilecast.Local in typing.get_args(hint) and tilecast.Dask in typing.get_args(hint)


@pytest.mark.parametrize("bounds", [(500000, 4599900, 500100), (500000, 4599900, 500100, float("nan")),
                                    ("left", 4599900, 500100, 4600000)])
@pytest.mark.parametrize("bounds_crs", [None, "EPSG:4326"])
def test_bad_bounds_are_a_region_error_in_any_crs(raster, bounds, bounds_crs):
    """Checked before being transformed into the raster's CRS, where a library would fail on them first."""
    path = raster(np.zeros((1, 16, 16), "float32"))
    with pytest.raises(tilecast.RegionError, match="four finite numbers"):
        _model().predict_image(path, bounds=bounds, bounds_crs=bounds_crs)


def test_a_window_that_is_not_two_row_col_pairs_is_a_region_error(raster):
    path = raster(np.zeros((1, 16, 16), "float32"))
    with pytest.raises(tilecast.RegionError, match=r"Window.*\(\(row_start, row_stop\), \(col_start, col_stop\)\)"):
        _model().predict_image(path, window=(0, 0, 8, 8))
    with pytest.raises(tilecast.RegionError, match=r"\(\(-4, 8\), \(0, 8\)\): .*negative"):  # rasterio's reason
        _model().predict_image(path, window=((-4, 8), (0, 8)))
    out = _model().predict_image(path, window=((0, 8), (4, 12)))
    assert (out.plan.region.row_off, out.plan.region.col_off, out.plan.region.height, out.plan.region.width) == \
        (0, 4, 8, 8)


def test_bounds_crs_without_bounds_is_refused_not_ignored(raster):
    """As on the command line (--bounds-crs without --bounds): the whole raster would be predicted silently."""
    path = raster(np.zeros((1, 16, 16), "float32"))
    for region in ({}, {"window": ((0, 8), (0, 8))}):
        with pytest.raises(tilecast.RegionError, match="bounds_crs='EPSG:4326' is the CRS of bounds"):
            _model().predict_image(path, bounds_crs="EPSG:4326", **region)


@pytest.mark.parametrize("where", ["predict_image", "model", "with_options"])
def test_bands_given_as_one_string_are_band_names_not_letters(raster, where):
    path = raster(np.arange(3 * 8 * 8, dtype="float32").reshape(3, 8, 8), descriptions=["red", "green", "nir"])
    for text, expected in (("nir", ["nir"]), ("nir, red", ["nir", "red"]), ("3", ["nir"])):
        if where == "predict_image":
            pred = _model().predict_image(path, bands=text)
        elif where == "model":
            pred = _model(bands=text).predict_image(path)
        else:
            pred = _model().with_options(bands=text).predict_image(path)
        assert pred.source.band_names == expected


def test_input_properties_given_as_one_string_is_one_property():
    assert _model(input_properties="gain").spec.input_properties == ("gain",)
    assert _model().with_options(input_properties="gain,offset").spec.input_properties == ("gain", "offset")


def test_from_callable_takes_one_output_name_as_a_string(raster):
    path = raster(np.ones((1, 8, 8), "float32"))
    model = Model.from_callable(lambda x: {"out": x * 3}, outputs="out", layout="NCHW", input_tile_size=8)
    assert model.signature.output_names == ["out"]
    assert Model.from_callable(_double, inputs="x", layout="NCHW", input_tile_size=8).signature.input_names == ["x"]
    np.testing.assert_array_equal(model.predict_image(path).to_numpy(progress=False), np.full((1, 8, 8), 3.0))


# ---- Prediction's public methods check their arguments -----------------------------------------------------------


def test_run_takes_a_sink_not_a_path(raster, tmp_path):
    pred = _model().predict_image(raster(np.ones((1, 8, 8), "float32")))
    with pytest.raises(tilecast.SpecError, match=r"to_geotiff\(path\)"):
        pred.run(str(tmp_path / "out.tif"))
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize("method", ["to_geotiff", "to_zarr", "to_vector"])
def test_writing_to_no_path_is_a_tilecast_error(raster, method):
    pred = _model().predict_image(raster(np.ones((1, 8, 8), "float32")))
    with pytest.raises(tilecast.OutputError, match=f"{method} needs a path"):
        getattr(pred, method)(None)


@pytest.mark.parametrize("chunk_size", [-5, 0, "x", (8, 8, 8), 2.5])
def test_a_bad_chunk_size_is_a_spec_error(raster, tmp_path, chunk_size):
    """It was silently a one-tile chunk (negative), or a bare ValueError from unpacking."""
    pred = _model().predict_image(raster(np.ones((1, 32, 32), "float32")))
    with pytest.raises(tilecast.SpecError, match="chunk_size"):
        pred.to_geotiff(tmp_path / "o.tif", resume=True, chunk_size=chunk_size, progress=False)
    with pytest.raises(tilecast.SpecError, match="chunk_size"):
        pred.to_xarray(engine="dask", chunk_size=chunk_size)
    assert not (tmp_path / "o.tif").exists()


def test_a_good_chunk_size_gives_the_same_pixels(raster, tmp_path):
    data = np.arange(32 * 40, dtype="float32").reshape(1, 32, 40)
    pred = _model().predict_image(raster(data))
    for size in (16, "16,8", (24, 16)):
        out = pred.to_geotiff(tmp_path / f"o{len(str(size))}.tif", resume=True, chunk_size=size, progress=False)
        with rasterio.open(out) as ds:
            np.testing.assert_array_equal(ds.read(1), data[0] * 2)


# ---- the README's examples say what the code does -----------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # 0 / 0 in the padding
def test_the_readme_ndvi_model_is_right_on_an_unsigned_integer_raster(raster, tmp_path, monkeypatch):
    """A function model gets the raster's dtype; the README's NDVI must not wrap around where red > nir (water)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"^ndvi = tilecast\.Model\.from_callable\(.*?\.to_geotiff\(\"ndvi\.tif\"\)$", readme, re.S | re.M)
    red = np.array([[3000, 200], [1000, 50]], "uint16").repeat(4, axis=0).repeat(4, axis=1)
    nir = np.array([[1000, 4000], [1000, 40000]], "uint16").repeat(4, axis=0).repeat(4, axis=1)
    raster(np.stack([red, nir]), name="scene.tif", descriptions=["red", "nir"])
    monkeypatch.chdir(tmp_path)
    exec(code.group(0), {"tilecast": tilecast})
    with rasterio.open(tmp_path / "ndvi.tif") as ds:
        got = ds.read(1)
    r, n = red.astype(np.float64), nir.astype(np.float64)
    np.testing.assert_allclose(got, (n - r) / (n + r), rtol=1e-6)


# ---- the documented error tree is the real one ----------------------------------------------------------------------


def test_the_drawn_error_tree_is_the_class_tree():
    """Each class drawn in tilecast.errors' docstring sits under its real parent and names its real builtins."""
    drawn: dict[str, tuple[str, list[str]]] = {}
    stack: list[tuple[int, str]] = []
    for line in tilecast.errors.__doc__.splitlines():
        m = re.match(r"^(\s*(?:[│ ]\s*)*(?:├── |└── )?)([A-Z]\w+)(?: \(([\w, ]+)\))?", line)
        if not m or not (m.group(2).endswith(("Error", "Warning"))):
            continue
        depth = len(m.group(1))
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parent = stack[-1][1] if stack else ""
        drawn[m.group(2)] = (parent, [b.strip() for b in (m.group(3) or "").split(",") if b.strip()])
        stack.append((depth, m.group(2)))
    assert set(drawn) == set(tilecast.errors.__all__)
    for name, (parent, mixed) in drawn.items():
        bases = [b.__name__ for b in getattr(tilecast.errors, name).__bases__]
        assert bases == [parent or "Exception", *mixed] if parent or not mixed else bases == mixed, \
            f"{name} is drawn as {parent or '(root)'} {mixed} but derives from {bases}"


def test_malformed_engine_crs_batch_and_fill_values_are_tilecast_errors(tmp_path):
    """Each was a raw TypeError or ValueError from deep inside (or, for fill_value="x", accepted silently)."""
    from onnx_models import linear_1x1
    from tilecast.errors import SpecError, UnknownCRSError
    from tilecast.sources.rasterio_source import parse_crs

    with pytest.raises(UnknownCRSError, match="EPSG:nonsense"):
        parse_crs("EPSG:nonsense")
    with pytest.raises(SpecError, match=r"Local\(threads='2'\)"):
        tilecast.Local(threads="2")
    path = linear_1x1(tmp_path / "m.onnx", [1.0])
    for params, message in (({"batch_size": "4"}, "batch_size must be a whole number"),
                            ({"batch_size": 2.5}, "batch_size must be a whole number"),
                            ({"fill_value": "x"}, "fill_value must be a number")):
        with pytest.raises(SpecError, match=message):
            tilecast.Model.load(path, input_tile_size=8, **params)
    assert tilecast.Model.load(path, input_tile_size=8, batch_size=3, fill_value=float("nan")).spec.batch_size == 3
