"""The streaming COG writer produces the file GDAL's COG driver would, with the work done while streaming."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

pytest.importorskip("tifffile")
pytest.importorskip("imagecodecs")

from onnx_models import mean_conv
from tilecast import Model
from tilecast.errors import OutputExistsError
from tilecast.sinks.base import OutputProfile
from tilecast.sinks.cog_stream import StreamingCOGSink
from tilecast.sinks.geotiff import GeoTIFFSink
from tilecast.sources.base import Grid
from tilecast.spec import OutputBand


def _profile(data: np.ndarray, nodata, categorical=False, bands=()) -> OutputProfile:
    c, h, w = data.shape
    grid = Grid(CRS.from_epsg(32633), from_origin(500000.0, 4600000.0, 10.0, 10.0), (h, w))
    return OutputProfile(grid, tuple(f"b{i}" for i in range(c)), np.dtype(data.dtype), nodata, bands=bands,
                         categorical=categorical, tags={"model": "test", "params": {"k": 1}})


def _write(sink, profile: OutputProfile, data: np.ndarray):
    sink.open(profile)
    h, w = profile.grid.shape
    for r in range(0, h, sink.block_rows):
        n = min(sink.block_rows, h - r)
        sink.write(Window(0, r, w, n), data[:, r:r + n])
    return sink.close()


def _levels(path) -> list[np.ndarray]:
    out = []
    with rasterio.open(path) as ds:
        n = len(ds.overviews(1))
        out.append(ds.read())
    for i in range(n):
        with rasterio.open(path, overview_level=i) as ds:
            out.append(ds.read())
    return out


def _assert_same_cog(a, b) -> None:
    with rasterio.open(a) as A, rasterio.open(b) as B:
        assert B.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert B.tags(ns="IMAGE_STRUCTURE") == A.tags(ns="IMAGE_STRUCTURE")
        assert B.profile == A.profile
        assert B.descriptions == A.descriptions
        assert B.tags() == A.tags()
        for i in range(1, A.count + 1):
            assert B.tags(i) == A.tags(i)
            assert B.overviews(i) == A.overviews(i)
    la, lb = _levels(a), _levels(b)
    assert len(la) == len(lb) > 1
    for x, y in zip(la, lb, strict=True):
        assert x.shape == y.shape
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("nodata", [-9999.0, None])
def test_float_multiband_matches_gdal_cog(tmp_path, nodata):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 20, (3, 1024, 768)).astype("float32")
    data[0, :40, :50] = -9999.0  # nodata is left out of the averages
    data[1, 100:103, 7] = np.nan  # NaN propagates, as in GDAL
    profile = _profile(data, nodata)
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=256), profile, data)
    sink = StreamingCOGSink(tmp_path / "stream.tif", blocksize=256)
    b = _write(sink, profile, data)
    assert not sink._fallen_back
    _assert_same_cog(a, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdal.tif", "stream.tif"]


def test_class_map_keeps_classes_colours_and_nearest_overviews(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 4, (1, 512, 1024)).astype("uint8")
    band = OutputBand("lc", np.dtype("uint8"), classes=((0, "water"), (1, "tree"), (2, "crop"), (3, "urban")),
                      colors=((0, (0, 0, 255)), (1, (0, 128, 0)), (2, (255, 255, 0)), (3, (255, 0, 0))))
    profile = _profile(data, 255, categorical=True, bands=(band,))
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=256), profile, data)
    b = _write(StreamingCOGSink(tmp_path / "stream.tif", blocksize=256), profile, data)
    _assert_same_cog(a, b)
    with rasterio.open(a) as A, rasterio.open(b) as B:
        assert B.colormap(1) == A.colormap(1)
        assert "class_names" in B.tags(1)


@pytest.mark.parametrize("dtype", ["int16", "uint16"])
def test_integer_average_rounds_like_gdal(tmp_path, dtype):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 1000, (2, 512, 512)).astype(dtype)
    profile = _profile(data, None)
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=128), profile, data)
    b = _write(StreamingCOGSink(tmp_path / "stream.tif", blocksize=128), profile, data)
    _assert_same_cog(a, b)


def test_odd_size_falls_back_to_gdal_and_stays_identical(tmp_path):
    data = np.arange(301 * 277, dtype="float32").reshape(1, 301, 277)
    profile = _profile(data, None)
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=128), profile, data)
    sink = StreamingCOGSink(tmp_path / "stream.tif", blocksize=128)
    b = _write(sink, profile, data)
    assert sink._fallen_back
    _assert_same_cog(a, b)


def test_refuses_existing_output_and_abort_leaves_nothing(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"")
    with pytest.raises(OutputExistsError):
        StreamingCOGSink(tmp_path / "x.tif")
    data = np.zeros((1, 512, 512), "float32")
    sink = StreamingCOGSink(tmp_path / "y.tif", blocksize=256)
    sink.open(_profile(data, None))
    sink.write(Window(0, 0, 512, 256), data[:, :256])
    sink.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["x.tif"]


def test_predict_pipeline_writes_the_same_cog(tmp_path, raster):
    """Through the threaded runner (strips written by its writer thread), against ``to_geotiff``."""
    img = np.random.default_rng(3).random((2, 512, 384)).astype("float32")
    model = Model.from_onnx(mean_conv(tmp_path / "m.onnx", 2, 5), input_tile_size=64, input_overlap_size=4,
                            output_bands={"mean": "float32"})
    a = model.predict_image(raster(img)).to_geotiff(tmp_path / "gdal.tif")
    sink = StreamingCOGSink(tmp_path / "stream.tif")
    b = model.predict_image(raster(img)).run(sink, progress=False)
    assert not sink._fallen_back
    with rasterio.open(b) as ds:
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
    with rasterio.open(a) as A, rasterio.open(b) as B:
        assert B.descriptions == A.descriptions and B.tags() == A.tags()
        assert str(B.nodata) == str(A.nodata)  # NaN, the default for float outputs
    for x, y in zip(_levels(a), _levels(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_nan_nodata_overviews_match_gdal(tmp_path):
    data = np.random.default_rng(4).random((1, 512, 512)).astype("float32")
    data[0, 10:13, 20:23] = np.nan
    data[0, 64:128, 64:128] = np.nan
    profile = _profile(data, float("nan"))
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=128), profile, data)
    b = _write(StreamingCOGSink(tmp_path / "stream.tif", blocksize=128), profile, data)
    with rasterio.open(a) as A, rasterio.open(b) as B:
        assert B.tags(ns="IMAGE_STRUCTURE") == A.tags(ns="IMAGE_STRUCTURE")
    for x, y in zip(_levels(a), _levels(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_reused_strip_buffers_and_short_strips(tmp_path):
    """Writers that reuse one strip buffer (the TFRecord importer) and strips shorter than a tile row."""
    data = np.random.default_rng(5).random((1, 512, 256)).astype("float32")
    profile = _profile(data, None)
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=128), profile, data)
    sink = StreamingCOGSink(tmp_path / "stream.tif", blocksize=128)
    sink.open(profile)
    strip = np.empty((1, 48, 256), "float32")
    for r in range(0, 512, 48):
        n = min(48, 512 - r)
        strip[:, :n] = data[:, r:r + n]
        sink.write(Window(0, r, 256, n), strip[:, :n])
        strip[:] = -1  # reused by the caller
    b = sink.close()
    _assert_same_cog(a, b)


@pytest.mark.parametrize("compress", ["ZSTD", "LZW", "NONE"])
def test_other_compressions(tmp_path, compress):
    data = np.random.default_rng(6).integers(0, 50, (2, 256, 256)).astype("uint16")
    profile = _profile(data, 0)
    a = _write(GeoTIFFSink(tmp_path / "gdal.tif", blocksize=128, compress=compress), profile, data)
    sink = StreamingCOGSink(tmp_path / "stream.tif", blocksize=128, compress=compress)
    b = _write(sink, profile, data)
    assert sink._fallen_back == (compress == "NONE")  # uncompressed: GDAL's conversion, which is cheap
    if compress == "NONE":
        np.testing.assert_array_equal(_levels(a)[1], _levels(b)[1])
        return
    _assert_same_cog(a, b)
