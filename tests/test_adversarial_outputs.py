"""Outputs that would destroy an input, and output options GDAL would silently ignore (issue 17, items 1 and 7)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import rasterio

from tilecast import Model
from tilecast.errors import OutputError
from tilecast.sinks.geotiff import GeoTIFFSink
from tilecast.sinks.safety import OutputIsInputError, OutputOptionError, refuse_overwriting_inputs
from tilecast.sources.mosaic import MosaicSource

pytestmark = pytest.mark.adversarial


def _model() -> Model:
    return Model.from_callable(lambda x: x * 2, layout="NCHW", input_tile_size=16, output_bands={"y": "float32"})


def _vrt(path, members) -> str:
    sources = "".join(
        f'<SimpleSource><SourceFilename relativeToVRT="0">{m}</SourceFilename><SourceBand>1</SourceBand>'
        f'<SrcRect xOff="0" yOff="0" xSize="32" ySize="32"/><DstRect xOff="{32 * i}" yOff="0" xSize="32" '
        'ySize="32"/></SimpleSource>'
        for i, m in enumerate(members)
    )
    path.write_text(
        f'<VRTDataset rasterXSize="{32 * len(members)}" rasterYSize="32"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>500000,10,0,4600000,0,-10</GeoTransform>"
        f'<VRTRasterBand dataType="Float32" band="1">{sources}</VRTRasterBand></VRTDataset>'
    )
    return str(path)


@pytest.fixture
def img():
    return np.arange(32 * 32, dtype="float32").reshape(1, 32, 32)


def _digest(path) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("spelling", ["same", "dotdot", "hardlink", "symlink"])
def test_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path, raster, img, spelling):
    path = raster(img, name="x.tif")
    before = _digest(path)
    (tmp_path / "sub").mkdir()
    out = {"same": path, "dotdot": str(tmp_path / "sub" / ".." / "x.tif")}.get(spelling)
    if spelling == "hardlink":
        out = str(tmp_path / "link.tif")
        os.link(path, out)
    if spelling == "symlink":
        out = str(tmp_path / "sym.tif")
        os.symlink(path, out)
    with pytest.raises(OutputIsInputError, match="same file as the input"):
        _model().predict_image(path).to_geotiff(out, overwrite=True)
    assert _digest(path) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_resumable_and_zarr_outputs_refuse_the_input_too(tmp_path, raster, img):
    path = raster(img, name="x.tif")
    before = _digest(path)
    with pytest.raises(OutputIsInputError):
        _model().predict_image(path).to_geotiff(path, overwrite=True, resume=True)
    assert _digest(path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_vrt_members_mosaic_members_and_stac_assets_are_inputs(tmp_path, raster, img):
    a = raster(img, name="a.tif")
    b = raster(img + 1, name="b.tif")
    vrt = _vrt(tmp_path / "m.vrt", [a, b])
    nested = _vrt(tmp_path / "n.vrt", [vrt])
    for target in (a, b, vrt):
        with pytest.raises(OutputIsInputError):
            refuse_overwriting_inputs(target, nested)
    before = _digest(b)
    with pytest.raises(OutputIsInputError):
        _model().predict_image(vrt).to_geotiff(b, overwrite=True)
    assert _digest(b) == before
    mosaic = MosaicSource([[a], [b]])
    with pytest.raises(OutputIsInputError, match=r"b\.tif"):
        refuse_overwriting_inputs(tmp_path / "." / "b.tif", mosaic)
    stac_like = MosaicSource([[a, b]], band_names=["r", "g"])  # one item, one asset per band
    with pytest.raises(OutputIsInputError):
        refuse_overwriting_inputs(b, stac_like)
    refuse_overwriting_inputs(tmp_path / "other.tif", nested, mosaic)  # another file is fine
    refuse_overwriting_inputs(tmp_path / "other.tif", "https://example.com/a.tif", None)


def test_an_output_folder_holding_an_input_is_refused(tmp_path, raster, img):
    (tmp_path / "store.zarr").mkdir()
    inside = raster(img, name="store.zarr/x.tif")
    with pytest.raises(OutputIsInputError):
        refuse_overwriting_inputs(tmp_path / "store.zarr", inside)


def test_errors_belong_to_the_tree():
    assert issubclass(OutputIsInputError, OutputError) and issubclass(OutputIsInputError, ValueError)
    assert issubclass(OutputOptionError, OutputError) and issubclass(OutputOptionError, ValueError)


@pytest.mark.parametrize("bad", ["BOGUS", "", "jpeg2000", "deflate9"])
def test_unknown_compression_is_a_clear_error(tmp_path, bad):
    with pytest.raises(OutputOptionError, match="DEFLATE"):
        GeoTIFFSink(tmp_path / "o.tif", compress=bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("good", ["DEFLATE", "zstd", "LZW", "NONE"])
def test_known_compression_is_written(tmp_path, raster, img, good):
    out = _model().predict_image(raster(img)).to_geotiff(tmp_path / "o.tif", compress=good)
    with rasterio.open(out) as ds:
        got = (ds.compression.name if ds.compression else "NONE").upper()
    assert got == good.upper()


def test_a_full_disk_while_building_the_cog_is_a_clear_error(tmp_path, raster, img, monkeypatch):
    from rasterio.errors import RasterioIOError

    import tilecast.sinks.geotiff as geotiff

    def full(src, dst, options):
        with open(dst, "wb") as fh:
            fh.write(b"partial")
        raise RasterioIOError("No space left on device")

    monkeypatch.setattr(geotiff, "copy_to_cog", full)
    path = raster(img)
    with pytest.raises(OutputError, match=r"No space left on device.*writable and has room"):
        _model().predict_image(path).to_geotiff(tmp_path / "o.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in0.tif"]


def test_a_failing_write_is_a_clear_error(tmp_path, raster, img, monkeypatch):
    from rasterio._err import CPLE_FileIOError

    import tilecast.sinks.geotiff as geotiff

    def broken(self, data, window=None, **kwargs):
        raise CPLE_FileIOError(3, 4, "Write error: No space left on device")

    sink = geotiff.GeoTIFFSink(tmp_path / "o.tif")
    pred = _model().predict_image(raster(img))
    sink.open(pred.job.profile)
    monkeypatch.setattr(type(sink._dst), "write", broken)
    from tilecast.runners.local import run_local

    with pytest.raises(OutputError, match="cannot write"):
        run_local(pred.job, sink)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in0.tif"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_clear_error(tmp_path, raster, img):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="writable"):
            _model().predict_image(raster(img)).to_geotiff(folder / "o.tif")
    finally:
        folder.chmod(0o755)


def test_an_output_larger_than_the_free_space_is_refused_before_any_work(tmp_path, monkeypatch):
    from affine import Affine
    from rasterio.crs import CRS

    from tilecast.sinks.base import OutputProfile
    from tilecast.sources.base import Grid

    monkeypatch.delenv("CHECK_DISK_FREE_SPACE", raising=False)
    grid = Grid(CRS.from_epsg(32633), Affine(10, 0, 500000, 0, -10, 4600000), (3_000_000, 3_000_000))
    sink = GeoTIFFSink(tmp_path / "h.tif")
    with pytest.raises(OutputError, match=r"space.*--bounds"):
        sink.open(OutputProfile(grid, ("y",), np.dtype("float32"), None))
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("CHECK_DISK_FREE_SPACE", "FALSE")  # GDAL's switch turns it off
    sink.open(OutputProfile(grid, ("y",), np.dtype("float32"), None))
    sink.abort()
    assert list(tmp_path.iterdir()) == []
