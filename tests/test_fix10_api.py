"""Round 10 of the public API review: defects earlier reviews noticed and left alone (a runtime left open by a
refused constructor, options silently ignored, fractional windows truncated, outputs under the wrong format's name,
``to_numpy`` needing xarray, channel-axis messages)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

import tilecast
from onnx_models import linear_1x1
from tilecast import Model
from tilecast.sinks import ArraySink


def _raster(path, bands: int = 3, width: int = 50, height: int = 40) -> str:
    """Pixel values that encode their own position: band b, row r, col c holds b * 10000 + r * 100 + c."""
    b, r, c = np.meshgrid(np.arange(bands), np.arange(height), np.arange(width), indexing="ij")
    data = (b * 10000 + r * 100 + c).astype(np.float32)
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands, dtype="float32",
                       crs="EPSG:32631", transform=from_origin(500000, 4000000, 10, 10)) as ds:
        ds.write(data)
    return str(path)


def _first_band(x: np.ndarray) -> np.ndarray:
    return x[:, :1]


def _model(**params) -> Model:
    return Model.from_callable(_first_band, **{"layout": "NCHW", "input_tile_size": 16, **params})


# ---- 3. a constructor that refuses its parameters closes the runtime it opened --------------------------------------


def _record_closes(monkeypatch, cls) -> list:
    closed: list = []
    real = cls.close

    def close(self):
        closed.append(self)
        real(self)

    monkeypatch.setattr(cls, "close", close)
    return closed


def test_from_onnx_closes_its_session_when_a_parameter_is_refused(tmp_path, monkeypatch):
    from tilecast.runtimes.onnx import OnnxRuntime

    closed = _record_closes(monkeypatch, OnnxRuntime)
    path = linear_1x1(tmp_path / "lin.onnx", [1.0, 2.0])
    with pytest.raises(tilecast.SpecError, match="input_tile_szie"):
        Model.from_onnx(path, input_tile_szie=16)
    assert len(closed) == 1 and closed[0].session is None
    with pytest.raises(tilecast.SpecError, match="overlap"):
        Model.from_onnx(path, input_tile_size=16, input_overlap_size=-1)
    assert len(closed) == 2
    model = Model.from_onnx(path, input_tile_size=16)  # accepted: left open
    assert len(closed) == 2 and model.runtime.session is not None
    model.close()


def test_from_callable_and_from_endpoint_close_their_runtime_when_a_parameter_is_refused(monkeypatch):
    from tilecast.runtimes.callable import CallableRuntime
    from tilecast.runtimes.http import EndpointRuntime

    callables = _record_closes(monkeypatch, CallableRuntime)
    endpoints = _record_closes(monkeypatch, EndpointRuntime)
    with pytest.raises(tilecast.SpecError, match="bacth_size"):
        Model.from_callable(_first_band, input_tile_size=8, bacth_size=2)
    assert len(callables) == 1
    with pytest.raises(tilecast.SpecError, match="bacth_size"):  # no request is sent: the URL is never reached
        Model.from_vertex_ai("http://127.0.0.1:9/v1/projects/p/locations/r/endpoints/1:predict",
                             token="test", input_tile_size=8, bacth_size=2)
    assert len(endpoints) == 1


# ---- 2. a fractional window covers the pixels it touches, as bounds do ----------------------------------------------


def _expected(rows: range, cols: range) -> np.ndarray:
    r, c = np.meshgrid(np.array(rows), np.array(cols), indexing="ij")
    return (r * 100 + c).astype(np.float32)[None]  # band 0 of _raster at those pixels


@pytest.mark.parametrize(("window", "rows", "cols"), [
    (Window(2.2, 3.7, 5, 5), range(3, 9), range(2, 8)),  # reaches into row 8 and col 7: both covered
    (Window(0.5, 0.5, 10.4, 10.4), range(0, 11), range(0, 11)),
    (((0.5, 10.9), (1.2, 7.5)), range(0, 11), range(1, 8)),  # ((row_start, row_stop), (col_start, col_stop))
    (Window(3.5, 4.5, 0.25, 0.25), range(4, 5), range(3, 4)),  # inside one pixel: that pixel
    (Window(2 + 1e-9, 3 - 1e-9, 5 - 2e-9, 5 + 1e-9), range(3, 8), range(2, 7)),  # float noise: no extra pixel
])
def test_a_fractional_window_covers_every_pixel_it_touches(tmp_path, window, rows, cols):
    path = _raster(tmp_path / "img.tif")
    pred = _model().predict_image(path, window=window)
    got = pred.to_numpy()
    assert got.shape == (1, len(rows), len(cols))
    np.testing.assert_array_equal(got, _expected(rows, cols))
    assert pred.grid.transform == from_origin(500000 + 10 * cols.start, 4000000 - 10 * rows.start, 10, 10)


def test_a_window_from_rasterio_from_bounds_matches_the_same_bounds(tmp_path):
    from rasterio.windows import from_bounds

    path = _raster(tmp_path / "img.tif")
    bounds = (500023.0, 3999861.0, 500077.0, 3999944.0)  # not on pixel edges
    with rasterio.open(path) as ds:
        window = from_bounds(*bounds, transform=ds.transform)
    by_window = _model().predict_image(path, window=window)
    by_bounds = _model().predict_image(path, bounds=bounds)
    assert by_window.plan.region == by_bounds.plan.region == Window(2, 5, 6, 9)
    np.testing.assert_array_equal(by_window.to_numpy(), by_bounds.to_numpy())


@pytest.mark.parametrize("window", [Window(-0.5, 0, 5, 5), Window(46.5, 0, 4, 5), Window(float("nan"), 0, 5, 5),
                                    Window(0, 0, float("inf"), 5), Window(0, 0, 0, 5)])
def test_a_window_outside_the_raster_or_not_finite_is_a_region_error(tmp_path, window):
    path = _raster(tmp_path / "img.tif")
    with pytest.raises(tilecast.RegionError, match=r"window|region"):
        _model().predict_image(path, window=window)


# ---- 1. chunk_size where a run has no chunks is an error naming where it applies ------------------------------------


def test_chunk_size_on_a_plain_local_geotiff_run_is_a_spec_error_naming_resume(tmp_path):
    path = _raster(tmp_path / "img.tif")
    pred = _model().predict_image(path)
    out = tmp_path / "o.tif"
    with pytest.raises(tilecast.SpecError, match=r"chunk_size.*resume=True"):
        pred.to_geotiff(out, chunk_size=16)
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "img.tif"]
    with pytest.raises(tilecast.SpecError, match=r"chunk_size.*resume=True"):
        pred.run(ArraySink(), chunk_size=16)
    # where it applies it is taken, and the pixels are those of the plain run
    chunked = pred.to_geotiff(tmp_path / "c.tif", chunk_size=16, resume=True)
    plain = pred.to_geotiff(tmp_path / "p.tif")
    with rasterio.open(chunked) as a, rasterio.open(plain) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.read(1), _expected(range(40), range(50))[0])


def test_to_xarray_chunk_size_with_the_local_engine_is_a_spec_error_naming_dask(tmp_path):
    pred = _model().predict_image(_raster(tmp_path / "img.tif"))
    with pytest.raises(tilecast.SpecError, match=r"chunk_size.*engine='dask'"):
        pred.to_xarray(chunk_size=16)


# ---- 4. an output under another format's name is refused before anything runs ---------------------------------------


@pytest.mark.parametrize("name", ["out.tif", "out.TIFF", "out.vrt", "out.jp2", "out.png"])
def test_to_zarr_refuses_a_raster_file_name_and_names_to_geotiff(tmp_path, name):
    pred = _model().predict_image(_raster(tmp_path / "img.tif"))
    with pytest.raises(tilecast.OutputError, match=r"Zarr store.*to_geotiff\("):
        pred.to_zarr(tmp_path / name)
    assert not (tmp_path / name).exists()


def test_to_zarr_refuses_a_vector_name_and_to_geotiff_a_zarr_name(tmp_path):
    pred = _model().predict_image(_raster(tmp_path / "img.tif"))
    with pytest.raises(tilecast.VectorFormatError, match=r"to_vector\(\)"):
        pred.to_zarr(tmp_path / "out.gpkg")
    with pytest.raises(tilecast.OutputError, match=r"to_zarr\("):
        pred.to_geotiff(tmp_path / "out.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif"]
    store = pred.to_zarr(tmp_path / "out.zarr")  # the right names still work
    xr = pytest.importorskip("xarray")
    with xr.open_zarr(store) as ds:
        np.testing.assert_array_equal(next(iter(ds.data_vars.values())).values[0], _expected(range(40), range(50))[0])


# ---- 5. to_numpy needs no xarray ------------------------------------------------------------------------------------


def test_to_numpy_works_without_xarray_and_to_xarray_names_the_extra(tmp_path, monkeypatch):
    import sys

    pred = _model().predict_image(_raster(tmp_path / "img.tif"), window=Window(3, 2, 30, 20))
    for name in ("xarray", "rioxarray"):
        monkeypatch.setitem(sys.modules, name, None)  # import xarray -> ImportError
    got = pred.to_numpy()
    assert type(got) is np.ndarray and got.dtype == np.float32
    np.testing.assert_array_equal(got, _expected(range(2, 22), range(3, 33)))
    with pytest.raises(tilecast.MissingExtraError, match=r"tilecast\[xarray\]"):
        pred.to_xarray()


def test_to_numpy_with_the_dask_engine_matches_the_local_engine(tmp_path):
    pytest.importorskip("dask.array")
    path = _raster(tmp_path / "img.tif")
    got = _model().predict_image(path, engine="dask").to_numpy()
    assert type(got) is np.ndarray
    np.testing.assert_array_equal(got, _model().predict_image(path).to_numpy())
    np.testing.assert_array_equal(got, _expected(range(40), range(50)))


# ---- 6. a stacked input's channel count: read off the right axis, and named in the error ----------------------------


def _identity(path, shape) -> str:
    """An ONNX model returning its one input ``x`` of ``shape`` as ``y``."""
    from onnx import TensorProto, helper

    from onnx_models import _save

    dims = [d if d is not None else f"d{i}" for i, d in enumerate(shape)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", [x], [y]), path)


def test_a_square_nhwc_input_is_read_as_nhwc_without_a_band_count():
    from tilecast.plan import TileGeometry, infer_layout
    from tilecast.runtimes.base import TensorSpec

    f32 = np.dtype("float32")
    assert infer_layout([TensorSpec("x", (1, 8, 8, 6), f32)]) == "NHWC"  # 6 bands of 8 x 8, not 8 bands of 8 x 6
    assert infer_layout([TensorSpec("x", (1, 6, 8, 8), f32)]) == "NCHW"
    assert infer_layout([TensorSpec("x", (1, 5, 7, 7), f32)]) == "NCHW"
    assert infer_layout([TensorSpec("x", (1, 7, 7, 5), f32)]) == "NHWC"
    assert tuple(TileGeometry.from_signature([TensorSpec("x", (1, 8, 8, 6), f32)]).tile) == (8, 8)


def test_an_nhwc_model_with_fixed_size_runs_with_its_own_tile(tmp_path):
    model = Model.from_onnx(_identity(tmp_path / "id.onnx", (1, 8, 8, 6)))  # the tile comes from the model
    path = _raster(tmp_path / "img.tif", bands=6, width=20, height=12)
    got = model.predict_image(path).to_numpy()
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(got, ds.read())
    model.close()


@pytest.mark.parametrize(("shape", "layout", "axis"), [
    ((1, 8, 8, 6), None, r"6 bands but 5 were selected.*its channel axis, the last in NHWC, has size 6"),
    ((1, 8, 8, 6), "NHWC", r"6 bands but 5 were selected.*its channel axis, the last in NHWC, has size 6"),
    ((1, 16, 16, 4), None, r"4 bands but 5 were selected.*its channel axis, the last in NHWC, has size 4"),
    ((None, None, None, 4), None, r"4 bands but 5 were selected.*its channel axis, the last in NHWC, has size 4"),
    ((1, 6, 8, 8), None, r"6 bands but 5 were selected.*its channel axis, the second in NCHW, has size 6"),
    ((None, 4, None, None), "NCHW", r"4 bands but 5 were selected.*its channel axis, the second in NCHW, has size 4"),
])
def test_a_channel_count_mismatch_names_the_channel_axis_and_its_size(tmp_path, shape, layout, axis):
    params = {} if None not in shape[1:] else {"input_tile_size": 8}
    model = Model.from_onnx(_identity(tmp_path / "id.onnx", shape), layout=layout, **params)
    with pytest.raises(tilecast.BandMismatchError, match=axis + r".*select \d bands with --bands") as info:
        _ = model.predict_image(_raster(tmp_path / "img.tif", bands=5)).profile
    assert "inferred" not in str(info.value)  # the other axis is the tile's: no hint to swap
    model.close()


def test_a_weakly_inferred_layout_says_how_to_swap_it(tmp_path):
    # only which axis is fixed says NHWC; read as NCHW the input is a 4-pixel-wide tile of any bands, as plausible
    model = Model.from_onnx(_identity(tmp_path / "id.onnx", (None, None, None, 4)), input_tile_size=4)
    with pytest.raises(tilecast.BandMismatchError, match=r"the last in NHWC.*inferred: if the channels are the second "
                                                         r"axis \(size any\), pass layout='NCHW'"):
        _ = model.predict_image(_raster(tmp_path / "img.tif", bands=5)).profile
    model.close()


# ---- found on the way: a GeoTIFF over a folder, vectors under a raster's name ---------------------------------------


def test_to_geotiff_over_a_folder_is_refused_before_running(tmp_path):
    calls = []

    def model(x):
        calls.append(len(x))
        return x[:, :1]

    pred = Model.from_callable(model, layout="NCHW", input_tile_size=16).predict_image(_raster(tmp_path / "img.tif"))
    folder = tmp_path / "out"
    folder.mkdir()
    for overwrite in (False, True):  # overwrite cannot replace a folder: say so, not "pass overwrite=True"
        with pytest.raises(tilecast.OutputError, match=r"is a folder.*give a file name") as info:
            pred.to_geotiff(folder, overwrite=overwrite)
        assert "overwrite=True (--overwrite)" not in str(info.value)
    assert calls == [] and folder.is_dir() and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "out"]


@pytest.mark.parametrize(("name", "other"), [("out.tif", "to_geotiff"), ("out.zarr", "to_zarr"), ("out", None)])
def test_to_vector_under_a_raster_name_names_the_vector_formats_and_the_raster_method(tmp_path, name, other):
    pred = _model().predict_image(_raster(tmp_path / "img.tif"))
    with pytest.raises(tilecast.VectorFormatError, match=r"not a vector format.*\.gpkg") as info:
        pred.to_vector(tmp_path / name)
    assert (f"or {other}() for a raster" in str(info.value)) if other else "for a raster" not in str(info.value)
    assert not (tmp_path / name).exists()


def test_auto_tile_closes_the_one_stream_session_it_probed_and_did_not_use(tmp_path):
    from tilecast.runtimes.callable import CallableRuntime

    closed: list = []

    class OneStreamOutOfMemory(CallableRuntime):  # the session for large calls: it runs out of memory
        def close(self):
            closed.append(self)

    class Streams(CallableRuntime):
        def one_stream(self):
            def refuse(x):
                raise MemoryError("simulated: out of memory")

            return OneStreamOutOfMemory(refuse, self.signature.inputs, self.signature.outputs)

    plain = Model.from_callable(lambda x: x[:, :1], input_tile_size="auto", layout="NCHW", memory_budget="8GiB",
                                output_bands={"s": "float32"})
    model = Model(Streams(lambda x: x[:, :1], plain.signature.inputs, plain.signature.outputs), plain.spec)
    model.auto_tile = plain.auto_tile
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=4096, height=4096, count=1, dtype="uint8", crs="EPSG:32631",
                       transform=from_origin(500000, 4000000, 10, 10), tiled=True) as ds:
        ds.write(np.zeros((1, 4096, 4096), np.uint8))
    pred = model.predict_image(str(path))
    choice = pred.model.tile_choice
    assert choice.padded.x * choice.padded.y * choice.batch < 1 << 20  # the large calls were refused
    assert pred.model.runtime is model.runtime  # the run uses the plain session
    assert len(closed) == 1  # and the one-stream session the large probes opened is closed


# ---- found on the way: parameters silently misread, or failing with a raw traceback ---------------------------------


@pytest.mark.parametrize(("params", "match"), [
    ({"output_layout": "NCHW"}, r"output_layout must be 'channels_last'.*'channels_first'.*got 'NCHW'"),
    ({"output_layout": "channel_first"}, r"output_layout must be"),
    ({"nodata": "x"}, r"nodata must be a number"),
    ({"input_type_override": "float32"}, r"input_type_override maps input names"),
    ({"input_shapes": "array"}, r"input_shapes maps input names"),
])
def test_a_misread_parameter_is_a_spec_error(params, match):
    with pytest.raises(tilecast.SpecError, match=match):
        _model(**params)
    with pytest.raises(tilecast.SpecError, match=match):
        _model().with_options(**params)


@pytest.mark.parametrize(("output_layout", "fn"), [
    ("channels_last", lambda x: x[:, :2].transpose(0, 2, 3, 1)),  # NCHW in, (N, H, W, C) out
    ("channels_first", lambda x: x[:, :2]),
])
def test_both_output_layouts_are_still_read(tmp_path, output_layout, fn):
    path = _raster(tmp_path / "img.tif", width=20, height=12)
    model = Model.from_callable(fn, layout="NCHW", input_tile_size=16, output_layout=output_layout,
                                output_bands={"o": {"type": "float32", "dimensions": 1}})
    got = model.predict_image(path).to_numpy()
    with rasterio.open(path) as ds:
        np.testing.assert_array_equal(got, ds.read([1, 2]))


@pytest.mark.parametrize("bands", [2, np.int64(2), [2], "b2"])
def test_one_band_index_selects_that_band(tmp_path, bands):
    path = _raster(tmp_path / "img.tif", width=20, height=12)
    got = _model().predict_image(path, bands=bands).to_numpy()
    np.testing.assert_array_equal(got, _expected(range(12), range(20)) + 10000)  # band 2 holds 10000 + r * 100 + c
    got = _model(bands=bands).predict_image(path).to_numpy()
    np.testing.assert_array_equal(got, _expected(range(12), range(20)) + 10000)


def test_progress_for_the_dask_engines_arrays_is_a_spec_error_naming_dasks_own(tmp_path):
    pytest.importorskip("dask.array")
    pred = _model().predict_image(_raster(tmp_path / "img.tif"), engine="dask")
    for call in (lambda: pred.to_xarray(progress=True), lambda: pred.to_numpy(progress=True)):
        with pytest.raises(tilecast.SpecError, match=r"progress.*Dask.*ProgressBar"):
            call()
    np.testing.assert_array_equal(pred.to_numpy(), _expected(range(40), range(50)))  # without progress: computed


def test_a_misspelt_resampling_is_refused_when_the_spec_is_made():
    """A misspelt ``resampling`` (in a model card, or a Python call) was only caught when an input needed warping:
    on inputs already on the model's grid it was silently accepted."""
    from tilecast.spec import ModelSpec

    with pytest.raises(tilecast.SpecError, match=r"resampling 'bilinaer'.*bilinear"):
        ModelSpec.create(input_tile_size=16, output_bands={"y": "float32"}, resampling="bilinaer")
    assert ModelSpec.create(input_tile_size=16, output_bands={"y": "float32"}, resampling="cubic").resampling == "cubic"


@pytest.mark.parametrize("name", ["fix_input_proj", "mask_receptive_field"])
@pytest.mark.parametrize("value", ["false", "no", 2, None])
def test_a_switch_that_is_not_a_boolean_is_refused(name, value):
    """``fix_input_proj="false"`` (a string from a config file or an environment variable) turned the warp on:
    any truthy value was taken as True."""
    from tilecast.spec import ModelSpec

    with pytest.raises(tilecast.SpecError, match=rf"{name} must be True or False"):
        ModelSpec.create(input_tile_size=16, output_bands={"y": "float32"}, **{name: value})
    for ok in (True, False, np.bool_(True), 0, 1):
        assert ModelSpec.create(input_tile_size=16, output_bands={"y": "float32"}, **{name: ok})
