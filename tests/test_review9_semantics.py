"""Conformance with docs/earth-engine-semantics.md (review 9): each Earth Engine behaviour tilecast reproduces, checked
against an independent numpy computation (coordinate images, analytic models, untiled references)."""

from __future__ import annotations

import threading
from fractions import Fraction

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from conftest import coord_image
from tilecast import Model
from tilecast.errors import OutputShapeError, SpecError


def _zero_padded(img: np.ndarray, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """``img[:, r0:r0+h, c0:c0+w]`` with zeros where the window leaves the raster (the plan's edge padding)."""
    c, H, W = img.shape
    out = np.zeros((c, h, w), img.dtype)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r0 + h, H), max(c0, 0), min(c0 + w, W)
    if rr1 > rr0 and cc1 > cc0:
        out[:, rr0 - r0 : rr1 - r0, cc0 - c0 : cc1 - c0] = img[:, rr0:rr1, cc0:cc1]
    return out


class Recorder:
    """An identity model (NCHW) that keeps every tile it was sent."""

    def __init__(self) -> None:
        self.tiles: list[np.ndarray] = []
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.tiles.extend(np.array(t) for t in x)
            self.batches.append(len(x))
        return x


# ---- tiling: inputTileSize [w, h], inputOverlapSize per edge, tiles cut from the region's corner -----------------


@pytest.mark.parametrize("tile,overlap,mode,halo", [
    ((7, 5), (3, 1), "per_edge", (3, 1)),  # odd and asymmetric, per edge
    ((9, 4), (6, 2), "total", (3, 1)),  # Earth Engine's guide: the total over both edges, half per side
    ((5, 5), (0, 0), "per_edge", (0, 0)),
])
def test_each_tile_is_the_core_plus_its_halo_read_from_the_raster(raster, tile, overlap, mode, halo):
    """Every tensor the model sees is exactly ``tile + 2 * halo`` pixels (width, height) cut around its core, with
    real neighbours inside the raster and zeros beyond it; the cores tile the raster once from its corner."""
    img = coord_image(23, 31, bands=3) + 1  # band 2 encodes (row, col) uniquely; +1 keeps real pixels non-zero
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=tile, input_overlap_size=overlap,
                                overlap_mode=mode, output_bands={"r": "float32", "c": "float32", "k": "float32"})
    out = model.predict_image(raster(img)).to_numpy()
    np.testing.assert_array_equal(out, img)
    (tw, th), (hx, hy) = tile, halo
    assert {t.shape for t in rec.tiles} == {(3, th + 2 * hy, tw + 2 * hx)}
    cores = set()
    for t in rec.tiles:
        r0, c0 = int(t[0, hy, hx]) - 1, int(t[1, hy, hx]) - 1  # the core's first pixel says where the tile is
        assert r0 % th == 0 and c0 % tw == 0
        cores.add((r0, c0))
        np.testing.assert_array_equal(t, _zero_padded(img, r0 - hy, c0 - hx, th + 2 * hy, tw + 2 * hx))
    assert cores == {(r, c) for r in range(0, 23, th) for c in range(0, 31, tw)}


def test_tiles_start_at_the_corner_of_the_region_not_of_the_raster(raster):
    img = coord_image(40, 50, bands=3) + 1
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=(8, 6), input_overlap_size=(2, 3),
                                output_bands={"r": "float32", "c": "float32", "k": "float32"})
    pred = model.predict_image(raster(img), window=((5, 22), (3, 30)))  # rows 5..21, cols 3..29
    np.testing.assert_array_equal(pred.to_numpy(), img[:, 5:22, 3:30])
    firsts = {(int(t[0, 3, 2]) - 1, int(t[1, 3, 2]) - 1) for t in rec.tiles}
    assert firsts == {(r, c) for r in range(5, 22, 6) for c in range(3, 30, 8)}
    for t in rec.tiles:  # the halo holds the raster's real pixels around the region, not padding
        r0, c0 = int(t[0, 3, 2]) - 1, int(t[1, 3, 2]) - 1
        np.testing.assert_array_equal(t, _zero_padded(img, r0 - 3, c0 - 2, 12, 12))


def test_odd_total_overlap_is_refused_naming_the_even_values():
    with pytest.raises(SpecError, match=r"even.*\[8, 4\]"):
        Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=16, input_overlap_size=(7, 4),
                            overlap_mode="total")


# ---- tensors: (N, H, W, 1) per scalar band, (N, H, W, D) per array band, y first ----------------------------------


def test_scalar_and_array_bands_are_height_first_tensors(raster):
    """Earth Engine's layout: each scalar band is its own ``(H, W, 1)`` input and an array band ``(H, W, D)``, with
    ``H`` the tile height plus the overlap (non-square, so a transposed tensor shows)."""
    img = coord_image(20, 30, bands=4)
    path = raster(img, descriptions=["row", "col", "a_0", "a_1"])
    seen = {}

    def fn(batch):
        seen.update({k: v.copy() for k, v in batch.items()})
        return {"out": batch["row"][..., 0] + batch["a"][..., 1]}

    model = Model.from_callable(fn, input_tile_size=(10, 4), input_overlap_size=(1, 2), batch_size=1,
                                input_shapes={"a": [2]}, outputs=["out"], output_bands={"out": "float32"})
    out = model.predict_image(path).to_numpy()[0]
    np.testing.assert_array_equal(out, img[0] + img[3])
    assert seen["row"].shape == (1, 8, 12, 1) and seen["col"].shape == (1, 8, 12, 1)
    assert seen["a"].shape == (1, 8, 12, 2)
    core = (0, slice(2, 6), slice(1, 11), 0)  # every core lies inside the raster: row runs down axis 1, col along 2
    np.testing.assert_array_equal(np.diff(seen["row"][core], axis=0), 1)
    np.testing.assert_array_equal(np.diff(seen["row"][core], axis=1), 0)
    np.testing.assert_array_equal(np.diff(seen["col"][core], axis=1), 1)
    a = seen["a"][core[:3]]
    np.testing.assert_array_equal(a[..., 1] - a[..., 0], 1)  # a_0, a_1 in order


@pytest.mark.parametrize("override,want", [(None, np.uint16), ("float32", np.float32), ("int32", np.int32)])
def test_tensors_have_the_bands_pixel_type_unless_overridden(raster, override, want):
    img = (coord_image(12, 12, bands=2) * 3).astype("uint16")
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=12, output_bands={"a": "float64", "b": "float64"},
                                input_type_override={"input": override} if override else None)
    np.testing.assert_array_equal(model.predict_image(raster(img)).to_numpy(), img)
    (t,) = rec.tiles
    assert t.dtype == want
    np.testing.assert_array_equal(t, img)


@pytest.mark.parametrize("depth", [0, -2])
def test_an_array_band_of_no_bands_is_refused(raster, depth):
    """inputShapes {"b1": [0]} looped for ever while binding the bands (and [-2] bound bands by negative index)."""
    with pytest.raises(SpecError, match=r"input_shapes\['b1'\].*at least 1"):
        Model.from_callable(lambda b: b, input_tile_size=8, input_shapes={"b1": [depth]},
                            output_bands={"v": "float32"})


def test_matrix_pixels_are_refused_clearly():
    """Earth Engine allows 2-D pixels (inputShapes [2, 2], outputBands dimensions 2); tilecast writes bands, so it
    takes scalars and vectors only and says so."""
    with pytest.raises(SpecError, match=r"only \[\] or \[depth\]"):
        Model.from_callable(lambda b: b, input_tile_size=8, input_shapes={"patch": [2, 2]})
    with pytest.raises(SpecError, match=r"dimensions must be 0 .* or 1"):
        Model.from_callable(lambda b: b, input_tile_size=8, output_bands={"m": {"type": "float32", "dimensions": 2}})


# ---- output tile size: scale per axis, padded outputs centre-cropped, anything else a clear error ----------------


def test_asymmetric_output_tile_scales_each_axis_and_crops_the_padded_result(raster):
    """tile (32, 16) -> output (8, 16): 4x coarser in x only. The model returns its padded input size pooled, so the
    overlap (4, 2) becomes (1, 2) output pixels per edge, which are cropped."""
    img = np.random.default_rng(0).random((1, 40, 72)).astype("float32")
    path = raster(img, transform=from_origin(100, 900, 10, 10))

    def pool_x(x):  # (N, 1, H, W) -> (N, 1, H, W / 4)
        n, c, h, w = x.shape
        return x.reshape(n, c, h, w // 4, 4).mean(axis=4)

    model = Model.from_callable(pool_x, layout="NCHW", input_tile_size=(32, 16), input_overlap_size=(4, 2),
                                output_tile_size=(8, 16), output_bands={"m": "float32"})
    pred = model.predict_image(path)
    assert pred.grid.shape == (40, 18)
    assert pred.grid.transform == from_origin(100, 900, 40, 10)
    np.testing.assert_allclose(pred.to_numpy()[0], img[0].reshape(40, 18, 4).mean(axis=2), rtol=1e-6)


def test_a_model_output_of_another_size_names_both_shapes(raster):
    model = Model.from_callable(lambda x: x[:, :, :10, :10], layout="NCHW", input_tile_size=16,
                                input_overlap_size=2, output_bands={"v": "float32"})
    with pytest.raises(OutputShapeError, match=r"10 x 10 .*16 x 16 or the padded 20 x 20"):
        model.predict_image(raster(np.ones((1, 32, 32), "float32"))).to_numpy()


def test_one_output_pixel_per_tile_classifier(raster):
    """Earth Engine's example: a model taking a whole tile and returning one value, ``outputTileSize=[1, 1]``."""
    img = np.random.default_rng(1).random((1, 30, 45)).astype("float32")
    path = raster(img, transform=from_origin(0, 300, 10, 10))
    model = Model.from_callable(lambda x: x.mean(axis=(1, 2, 3)), layout="NCHW", input_tile_size=15,
                                output_tile_size=1, output_bands={"m": "float32"})
    pred = model.predict_image(path)
    assert pred.grid.shape == (2, 3) and pred.grid.transform == from_origin(0, 300, 150, 150)
    np.testing.assert_allclose(pred.to_numpy()[0], img[0].reshape(2, 15, 3, 15).mean(axis=(1, 3)), rtol=1e-6)


# ---- masks: min of the band masks over each output pixel's footprint, at any scale --------------------------------


def _footprint_mask(masked: np.ndarray, sy: Fraction, sx: Fraction, out_shape: tuple[int, int]) -> np.ndarray:
    """Independently: output pixel (i, j) covers input [i/sy, (i+1)/sy) x [j/sx, (j+1)/sx); it is valid when no
    masked input pixel overlaps that rectangle with a positive area."""
    valid = np.ones(out_shape, bool)
    for r, c in zip(*np.nonzero(masked), strict=True):
        for i in range(out_shape[0]):
            if not (Fraction(i) / sy < r + 1 and r < Fraction(i + 1) / sy):
                continue
            for j in range(out_shape[1]):
                if Fraction(j) / sx < c + 1 and c < Fraction(j + 1) / sx:
                    valid[i, j] = False
    return valid


@pytest.mark.parametrize("tile,out", [((6, 6), (4, 4)), ((4, 6), (8, 3)), ((6, 4), (6, 12))])
def test_output_mask_is_the_footprint_minimum_at_fractional_scales(raster, tile, out):
    h, w = 23, 25  # not whole tiles: the last output pixels reach past the raster
    img = np.ones((2, h, w), "float32")
    img[0, 7, 4] = img[1, 13, 17] = img[0, 0, 23] = img[1, 22, 9] = -1  # masked in one band each
    sx, sy = Fraction(out[0], tile[0]), Fraction(out[1], tile[1])

    def resize(x):  # nearest resampling to the output tile: any values, only the mask matters here
        hh, ww = x.shape[2:]
        rows = (np.arange(out[1]) * hh) // out[1]
        cols = (np.arange(out[0]) * ww) // out[0]
        return x[:, :1][:, :, rows][:, :, :, cols]

    model = Model.from_callable(resize, layout="NCHW", input_tile_size=tile, output_tile_size=out,
                                output_bands={"v": "float32"})
    got = model.predict_image(raster(img, nodata=-1)).to_numpy()[0]
    want = _footprint_mask((img == -1).any(axis=0), sy, sx, got.shape)
    assert got.shape == (int(np.ceil(h * sy)), int(np.ceil(w * sx)))
    np.testing.assert_array_equal(~np.isnan(got), want)


def test_masked_pixels_reach_the_model_as_the_fill_value_in_their_band_only(raster):
    img = coord_image(16, 16, bands=2) + 10
    img[0, 3, 4] = -5  # masked in band 0 only
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=16, fill_value=7,
                                output_bands={"a": "float32", "b": "float32"}, nodata=-99)
    out = model.predict_image(raster(img, nodata=-5)).to_numpy()
    (t,) = rec.tiles
    assert t[0, 3, 4] == 7 and t[1, 3, 4] == img[1, 3, 4]
    assert (out[:, 3, 4] == -99).all()  # the output mask is the minimum over the bands


@pytest.mark.parametrize("fill,override", [(-1.0, "float32"), (0.5, "float32"), (float("nan"), None)])
def test_a_fill_value_integer_bands_cannot_hold_reaches_the_model_as_given(raster, fill, override):
    """uint16 bands cannot hold -1, 0.5 or NaN: the model got 65535, 0 and 0 (with a RuntimeWarning) instead.
    Such a fill is applied in float (a callable with no declared input type then gets float32 tiles)."""
    img = (coord_image(16, 16, bands=1, dtype="uint16") + 1).astype("uint16")
    img[0, 2, 3] = 0
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=16, fill_value=fill, nodata=-99,
                                input_type_override={"input": override} if override else None,
                                output_bands={"v": "float32"})
    out = model.predict_image(raster(img, nodata=0)).to_numpy()[0]
    (t,) = rec.tiles
    assert t.dtype == np.float32
    np.testing.assert_array_equal(t[0, 2, 3], np.float32(fill))
    keep = img[0] != 0
    np.testing.assert_array_equal(t[0][keep], img[0][keep])
    assert out[2, 3] == -99


def test_fill_dtype_keeps_the_bands_dtype_when_it_holds_the_fill():
    from tilecast.pixels import fill_dtype

    assert fill_dtype(np.dtype("uint8"), 0) == np.uint8 and fill_dtype(np.dtype("int16"), -1) == np.int16
    assert fill_dtype(np.dtype("float32"), float("nan")) == np.float32
    assert fill_dtype(np.dtype("uint8"), -1) == np.float32 and fill_dtype(np.dtype("uint16"), 0.5) == np.float32
    assert fill_dtype(np.dtype("int32"), float("nan")) == np.float64  # float32 cannot hold every int32


# ---- output pixel types and band names ------------------------------------------------------------------------------


def test_declared_output_types_round_and_name_vector_bands(raster, tmp_path):
    img = np.random.default_rng(2).random((2, 16, 16)).astype("float32") * 100

    def fn(x):
        return {"cls": x[:, 0] + 0.4, "probs": x / 100}  # (N, H, W) scalar and (N, 2, H, W) vector

    model = Model.from_callable(fn, layout="NCHW", input_tile_size=8, outputs=["cls", "probs"],
                                output_bands={"cls": "uint8", "probs": {"type": "float32", "dimensions": 1}})
    out = model.predict_image(raster(img)).to_geotiff(tmp_path / "o.tif")
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("cls", "probs_0", "probs_1")
        assert ds.dtypes[0] == "float32"  # one file dtype: uint8 and float32 share float32
        data = ds.read()
    np.testing.assert_array_equal(data[0], np.rint(img[0] + 0.4))
    np.testing.assert_allclose(data[1:], img / 100, rtol=1e-6)


def test_earth_engine_pixel_type_dicts_declare_output_types(raster):
    img = np.random.default_rng(3).random((1, 8, 8)).astype("float32") * 200
    model = Model.from_callable(lambda x: x[:, 0], layout="NCHW", input_tile_size=8, output_bands={
        "c": {"type": {"type": "PixelType", "precision": "int", "min": 0, "max": 255}}})
    pred = model.predict_image(raster(img))
    assert pred.profile.dtype == np.uint8
    np.testing.assert_array_equal(pred.to_numpy()[0], np.rint(img[0]))


# ---- batching -------------------------------------------------------------------------------------------------------


def test_batch_size_caps_the_tiles_per_call(raster):
    img = coord_image(30, 30, bands=2)
    rec = Recorder()
    model = Model.from_callable(rec, layout="NCHW", input_tile_size=6, batch_size=4,
                                output_bands={"r": "float32", "c": "float32"})
    np.testing.assert_array_equal(model.predict_image(raster(img)).to_numpy(), img)
    assert max(rec.batches) <= 4 and sum(rec.batches) == 25


# ---- payloads: maxPayloadBytes defaults to Earth Engine's 1,500,000 ---------------------------------------------


def test_max_payload_bytes_defaults_to_earth_engines_limit_everywhere():
    import inspect

    from click.testing import CliRunner

    from tilecast.cli import main
    from tilecast.remote.options import EndpointOptions

    assert EndpointOptions().max_payload_bytes == 1_500_000
    assert inspect.signature(Model.from_endpoint).parameters["max_payload_bytes"].default == 1_500_000
    help_text = CliRunner().invoke(main, ["predict", "--help"], terminal_width=200).output
    assert "--max-payload-bytes" in help_text and "1500000" in help_text


# ---- inputProperties: image properties replicated into every tile ---------------------------------------------------


def test_a_property_the_models_input_type_cannot_take_is_a_clear_error(raster):
    """Earth Engine's "cannot be converted to a tensor": a text property for a float32 input was a raw ValueError
    from numpy, raised on the first batch."""
    from tilecast.errors import InputError
    from tilecast.runtimes.base import TensorSpec

    path = raster(np.ones((1, 16, 16), "float32"), descriptions=["x"], tags={"sensor": "S2A", "gain": "2"})
    inputs = [TensorSpec("x", None, None), TensorSpec("sensor", (None,), np.dtype("float32")),
              TensorSpec("gain", (None,), np.dtype("float32"))]
    model = Model.from_callable(lambda b: b["x"][..., 0] * b["gain"][:, None, None], inputs=inputs,
                                input_tile_size=8, input_properties=["sensor", "gain"], output_bands={"v": "float32"})
    with pytest.raises(InputError, match=r"'sensor' = 'S2A' .*float32.*input_type_override"):
        model.predict_image(path)
    ok = Model.from_callable(lambda b: b["x"][..., 0] * b["gain"][:, None, None], inputs=[inputs[0], inputs[2]],
                             input_tile_size=8, input_properties=["gain"], output_bands={"v": "float32"})
    np.testing.assert_array_equal(ok.predict_image(path).to_numpy()[0], 2)


# ---- parameters: Earth Engine's names, checked where they are given -------------------------------------------------


def test_a_mistyped_parameter_is_a_spec_error_naming_the_right_one():
    """``input_overlap=4`` was a raw TypeError from ModelSpec.__init__, which the user never called."""
    with pytest.raises(SpecError, match=r"'input_overlap'.*input_overlap_size"):
        Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=8, input_overlap=4)


def test_one_input_property_may_be_given_as_a_string(raster):
    """``input_properties="gain"`` was read letter by letter: properties 'g', 'a', 'i', 'n'."""
    path = raster(np.ones((1, 8, 8), "float32"), descriptions=["x"], tags={"gain": "3"})
    model = Model.from_callable(lambda b: b["x"][..., 0] * b["gain"][:, None, None], input_tile_size=8,
                                input_properties="gain", output_bands={"y": "float32"})
    assert model.spec.input_properties == ("gain",)
    np.testing.assert_array_equal(model.predict_image(path).to_numpy()[0], 3)


@pytest.mark.parametrize("bands,match", [
    ({"lc": {"type": "uint8", "dimensions": "x"}}, r"'lc'.*dimensions"),
    ({"lc": {"type": {"type": "PixelType", "precision": "bogus"}}}, r"'bogus'.*not a PixelType"),
    ({"lc": {"type": {"type": "PixelType", "precision": "int", "min": "a", "max": 3}}}, r"min and max numbers"),
    (5, r"output_bands"),
])
def test_malformed_output_bands_are_spec_errors(bands, match):
    with pytest.raises(SpecError, match=match):
        Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=8, output_bands=bands)


@pytest.mark.parametrize("shapes", [{"a": 3}, {"a": ["x"]}])
def test_malformed_input_shapes_are_spec_errors(shapes):
    with pytest.raises(SpecError, match=r"input_shapes\['a'\].*\[4\]"):
        Model.from_callable(lambda x: x, input_tile_size=8, input_shapes=shapes)


# ---- parameters carried by a model copy ------------------------------------------------------------------------------


def test_a_new_input_tile_keeps_the_output_at_the_input_scale(raster):
    """A model whose output tile followed its input tile keeps following it when the tile is changed."""
    img = coord_image(40, 40, bands=2)
    model = Model.from_callable(lambda x: x, layout="NCHW", input_tile_size=8,
                                output_bands={"r": "float32", "c": "float32"})
    copy = model.with_options(input_tile_size=16)
    assert copy.spec.geometry.out == (16, 16)
    np.testing.assert_array_equal(copy.predict_image(raster(img)).to_numpy(), img)


def test_the_tile_hint_for_a_fixed_size_model_also_works_in_total_overlap_mode(tmp_path, raster):
    """The hint gave the per-edge overlap only: followed with --overlap-mode total, it missed the size again."""
    import re

    from onnx_models import mean_conv
    from tilecast.errors import TileSizeError

    onnx = mean_conv(tmp_path / "m.onnx", 1, 3, hw=(64, 64))
    img = np.random.default_rng(4).random((1, 70, 90)).astype("float32")
    path = raster(img)
    with pytest.raises(TileSizeError) as info:
        Model.from_onnx(onnx, input_tile_size=60, input_overlap_size=8, overlap_mode="total").predict_image(path)
    tile = re.search(r"--tile (\d+),(\d+)", str(info.value)).groups()
    overlap = re.search(r"with --overlap-mode total, --overlap (\d+),(\d+)", str(info.value)).groups()
    model = Model.from_onnx(onnx, input_tile_size=[int(v) for v in tile], input_overlap_size=[int(v) for v in overlap],
                            overlap_mode="total")
    assert model.spec.geometry.padded == (64, 64)
    from scipy.ndimage import uniform_filter

    want = uniform_filter(img[0].astype(np.float64), size=3, mode="constant")
    np.testing.assert_allclose(model.predict_image(path).to_numpy()[0], want, atol=1e-5)
