"""The parallel pipeline gives the same bits as the serial one (issue 16, "no serial stage").

The same prediction runs with one CPU (every per-pixel step on one thread, plain per-thread reads) and with several
(shared input blocks decoded once, strips cast, divided and reduced to the first overview level in column spans,
the temporary file compressed on several threads), and every level of both COGs (pixels, masks, overviews) and
their metadata must be identical, for crop and cosine, with nodata and per-band masks, on tiled and striped inputs.
Spans are made narrow (``MIN_SPAN_PIXELS``) so these small rasters are really split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

import tilecast
import tilecast.parallel
import tilecast.resources
import tilecast.runners.local
from onnx_models import argmax_classes, mean_conv

H, W = 700, 900


def _input(path, tiled: bool, mask: bool) -> str:
    """4 uint16 bands whose values encode their coordinates, with a hole of zeros: nodata, or with ``mask`` valid
    zeros and an internal mask band over another region."""
    r, c = np.mgrid[0:H, 0:W]
    data = np.stack([(r * 7 + c * 3 + 11 * k) % 4000 + 1 for k in range(4)]).astype(np.uint16)
    data[:, 300:340, 410:470] = 0  # nodata in every band
    profile = dict(driver="GTiff", width=W, height=H, count=4, dtype="uint16", crs="EPSG:32633",
                   transform=from_origin(500000.0, 4600000.0, 10.0, 10.0))
    if tiled:
        profile.update(tiled=True, blockxsize=128, blockysize=128)
    else:
        profile.update(blockysize=8)
    if mask:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            m = np.full((H, W), 255, np.uint8)
            m[500:560, 100:700] = 0
            dst.write_mask(m)
    else:
        with rasterio.open(path, "w", nodata=0, **profile) as dst:
            dst.write(data)
    return str(path)


def _cog(path) -> dict:
    """Everything a reader sees: per level pixels and masks (as digests), and the metadata."""
    out: dict = {}
    with rasterio.open(path) as ds:
        out["meta"] = repr((ds.profile["dtype"], ds.count, ds.nodata, ds.crs.to_wkt(), tuple(ds.transform),
                            ds.descriptions, ds.tags(), [ds.tags(i) for i in range(1, ds.count + 1)], ds.block_shapes,
                            ds.overviews(1), ds.compression, ds.mask_flag_enums))
        out["pixels"] = hashlib.sha256(ds.read().tobytes()).hexdigest()
        out["masks"] = hashlib.sha256(ds.read_masks().tobytes()).hexdigest()
        levels = len(ds.overviews(1))
    for level in range(levels):
        with rasterio.open(path, overview_level=level) as ov:
            out[f"overview{level}"] = hashlib.sha256(ov.read().tobytes()).hexdigest()
    return out


def _predict(model_path, src, out, blend: str, monkeypatch, cpus: int, shared: bool) -> dict:
    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: cpus)
    if not shared:
        monkeypatch.setattr(tilecast.runners.local, "block_store_bytes", lambda job, res: 0)
    kw = dict(output_bands={"mean": "float32"}) if blend != "crop" else dict(output_bands={"cls": "uint8"})
    model = tilecast.Model.from_onnx(model_path, input_tile_size=96, input_overlap_size=12, layout="NCHW",
                                     blend=blend, batch_size=3, **kw)
    model.predict_image(src).to_geotiff(out, overwrite=True)
    monkeypatch.undo()
    return _cog(out)


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
@pytest.mark.parametrize("mask", [False, True], ids=["nodata", "mask"])
@pytest.mark.parametrize("blend", ["crop", "cosine"])
def test_parallel_run_is_bit_identical_to_serial(tmp_path, monkeypatch, blend, mask, tiled):
    src = _input(tmp_path / "in.tif", tiled, mask)
    model = mean_conv(tmp_path / "m.onnx", bands=4, k=5) if blend != "crop" else argmax_classes(tmp_path / "m.onnx", 4)
    serial = _predict(model, src, tmp_path / "serial.tif", blend, monkeypatch, cpus=1, shared=False)
    monkeypatch.setattr(tilecast.parallel, "MIN_SPAN_PIXELS", 64)  # split even these small strips
    parallel = _predict(model, src, tmp_path / "parallel.tif", blend, monkeypatch, cpus=4, shared=True)
    assert parallel == serial
    assert len(serial) > 3  # overview levels were compared
    with rasterio.open(tmp_path / "parallel.tif") as ds:  # and the output is what the model makes of the input
        valid = ds.read_masks(1) > 0
        assert valid[:250, :].all()
        hole = (slice(500, 560), slice(100, 700)) if mask else (slice(300, 340), slice(410, 470))
        assert not valid[hole].any()


def test_parallel_cast_raises_the_same_error(tmp_path, monkeypatch):
    """A value the declared dtype cannot hold stops the run with the same error whichever span meets it."""
    src = _input(tmp_path / "in.tif", True, False)
    model = mean_conv(tmp_path / "m.onnx", bands=4, k=3)
    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: 4)
    monkeypatch.setattr(tilecast.parallel, "MIN_SPAN_PIXELS", 64)
    m = tilecast.Model.from_onnx(model, input_tile_size=128, layout="NCHW", output_bands={"mean": "uint8"})
    with pytest.raises(tilecast.errors.CastError, match="do not fit uint8"):
        m.predict_image(src).to_geotiff(tmp_path / "out.tif")
    assert not (tmp_path / "out.tif").exists()
    assert [p.name for p in tmp_path.iterdir() if "tilecast" in p.name] == []


def test_shared_blocks_decode_each_block_once(tmp_path, monkeypatch):
    """With the store, every input block is decoded once however many tiles and readers touch it."""
    from tilecast.sources import blocks

    src = _input(tmp_path / "in.tif", True, False)
    stores: list = []
    original = blocks.BlockStore.__init__

    def remember(self, *a, **k):
        original(self, *a, **k)
        stores.append(self)

    monkeypatch.setattr(blocks.BlockStore, "__init__", remember)
    monkeypatch.setattr(tilecast.resources, "available_cpus", lambda: 4)
    model = tilecast.Model.from_onnx(argmax_classes(tmp_path / "m.onnx", 4), input_tile_size=64,
                                     input_overlap_size=16, layout="NCHW", output_bands={"cls": "uint8"})
    model.predict_image(src).to_geotiff(tmp_path / "out.tif")
    assert len(stores) == 1
    assert stores[0].decodes == -(-H // 128) * -(-W // 128)
    with rasterio.open(src) as ds:  # and the tiles were read right: the classes are the argmax of the bands
        expected = np.argmax(ds.read().astype(np.float32), axis=0)
    with rasterio.open(tmp_path / "out.tif") as out:
        got, valid = out.read(1), out.read_masks(1) > 0
    assert (got[valid] == expected[valid]).all()


def test_block_store_window_reads_match_gdal(tmp_path):
    """Any window read through the store equals GDAL's own read of it, masks included."""
    src = _input(tmp_path / "in.tif", True, True)
    source = tilecast.sources.RasterioSource(src)
    rng = np.random.default_rng(3)
    windows = [Window(int(x), int(y), int(w), int(h)) for x, y, w, h in
               zip(rng.integers(0, W - 200, 40), rng.integers(0, H - 200, 40), rng.integers(1, 200, 40),
                   rng.integers(1, 200, 40), strict=True)]
    plain = [source.read_masked(w) for w in windows]
    source.share_blocks(3 * 128 * 128 * 4 * 3)  # room for about three blocks: many are decoded again
    shared = [source.read_masked(w) for w in windows]
    source.share_blocks(0)
    for (d0, m0), (d1, m1) in zip(plain, shared, strict=True):
        assert d1.dtype == d0.dtype and (d1 == d0).all()
        assert (m0 is None) == (m1 is None)
        if m0 is not None:
            assert (m0 == m1).all()
    source.close()


@pytest.mark.parametrize("mask", [False, True], ids=["nodata", "mask"])
def test_store_budget_counts_what_blocks_hold(tmp_path, mask):
    """The run's store budget is priced per pixel by the source (``shared_pixel_bytes``): what a decoded block
    really holds (data, and masks where the block has masked pixels) never exceeds that price."""
    src = _input(tmp_path / "in.tif", True, mask)
    source = tilecast.sources.RasterioSource(src)
    source.share_blocks(2**30)
    source.read_masked(Window(0, 0, W, H))
    store = source._store
    held = [(b.data.nbytes + (0 if b.masks is None else b.masks.nbytes), b.data.shape[1] * b.data.shape[2])
            for b in store._blocks.values()]
    source.close()
    price = source.shared_pixel_bytes()
    assert price == 4 * (2 + 1)  # uint16 bands, each with a mask (nodata counts as one)
    assert all(nbytes <= pixels * price for nbytes, pixels in held)
    assert any(nbytes == pixels * price for nbytes, pixels in held)  # the blocks with masked pixels
