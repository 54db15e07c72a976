"""Earth Engine's masks are per band (issue 17, item 8): a pixel masked in one band is sent as the fill value in that
band only, and the output mask is the minimum over the bands. ``mask_receptive_field`` also masks output pixels whose
overlap neighbourhood touches masked input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import rasterio

from conftest import coord_image
from tilecast import Model
from tilecast.pixels import halo_valid
from tilecast.runners.local import run_local
from tilecast.sinks.memory import ArraySink

pytestmark = pytest.mark.adversarial

NODATA = -1.0


def _left_shift(x):
    """Each output pixel shows what the model received one column to its right (the last column: itself)."""
    out = x.copy()
    out[..., :-1] = x[..., 1:]
    return out


def _model(tile=16, overlap=1) -> Model:
    return Model.from_callable(_left_shift, layout="NCHW", input_tile_size=tile, input_overlap_size=overlap,
                               output_bands={"r": "float32", "g": "float32", "b": "float32"})


@pytest.fixture
def scene(raster):
    img = coord_image(40, 48, 3) + 100  # band 0 = row, band 1 = col, band 2 = row*1000+col+2, all > 0
    img[1, 10, 20] = NODATA  # masked in band 1 only
    img[:, 30, 30] = NODATA  # masked in every band
    return raster(img, nodata=NODATA), img


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.read_masks()


def test_a_pixel_masked_in_one_band_is_filled_in_that_band_only(tmp_path, scene):
    path, img = scene
    out, masks = _read(_model().predict_image(path).to_geotiff(tmp_path / "o.tif"))
    # The pixel left of (10, 20) shows what the model got at (10, 20): band 1 filled with 0, the others intact.
    assert out[0, 10, 19] == img[0, 10, 20]
    assert out[1, 10, 19] == 0
    assert out[2, 10, 19] == img[2, 10, 20]
    # The output mask is the minimum over the bands: (10, 20) itself is masked in every output band.
    assert (masks[:, 10, 20] == 0).all() and np.isnan(out[:, 10, 20]).all()
    assert (out[:, 30, 29] == 0).all()  # masked in every band: every band filled
    expected_masked = {(10, 20), (30, 30)}
    masked = {tuple(p) for p in np.argwhere(masks[0] == 0)}
    assert masked == expected_masked


def test_the_job_sends_each_band_its_own_mask(scene):
    path, img = scene
    pred = _model().predict_image(path)
    job = pred.job
    tile = next(t for t in pred.plan.tiles() if t.out.row_off <= 10 < t.out.row_off + t.out.height
                and t.out.col_off <= 20 < t.out.col_off + t.out.width)
    item = job.read(tile)
    g = pred.plan.geometry
    r, c = 10 - tile.out.row_off + g.overlap.y, 20 - tile.out.col_off + g.overlap.x
    assert item.data[:, r, c].tolist() == [img[0, 10, 20], 0, img[2, 10, 20]]
    assert item.valid is not None and not item.valid[10 - tile.out.row_off, 20 - tile.out.col_off]


def _brute_halo(valid: np.ndarray, o: int) -> np.ndarray:
    h, w = valid.shape
    out = np.ones_like(valid)
    for i in range(h):
        for j in range(w):
            out[i, j] = valid[max(0, i - o) : i + o + 1, max(0, j - o) : j + o + 1].all()
    return out


@pytest.mark.parametrize("overlap", [1, 2, 3])
def test_mask_receptive_field_masks_the_overlap_neighbourhood(tmp_path, scene, overlap):
    path, img = scene
    pred = _model(tile=16, overlap=overlap).predict_image(path)
    job = dataclasses.replace(pred.job, mask_receptive_field=True)
    sink = ArraySink()
    sink.open(job.profile)
    got = run_local(job, sink)
    got = np.asarray(got)
    valid = (img != NODATA).all(axis=0)
    expected = _brute_halo(valid, overlap)
    assert np.array_equal(~np.isnan(got[0]), expected)
    plain = _read(_model(tile=16, overlap=overlap).predict_image(path).to_geotiff(tmp_path / "p.tif"))[0]
    assert np.array_equal(got[:, expected], plain[:, expected])  # where valid, the same values


def test_halo_valid_is_a_minimum_filter():
    rng = np.random.default_rng(3)
    for oy, ox in [(0, 0), (1, 2), (3, 1)]:
        padded = rng.random((20 + 2 * oy, 24 + 2 * ox)) > 0.05
        got = halo_valid(padded, oy, ox)
        want = np.array([[padded[i : i + 2 * oy + 1, j : j + 2 * ox + 1].all() for j in range(24)]
                         for i in range(20)])
        assert np.array_equal(got, want)


def test_mask_receptive_field_is_the_same_in_chunks_and_resumes(tmp_path, scene):
    from tilecast.runners.chunks import ChunkLayout, fingerprint
    from tilecast.runners.local import run_local_chunked
    from tilecast.sinks.chunked import PartialGeoTIFFSink

    path, _ = scene
    pred = _model(tile=16, overlap=2).predict_image(path)
    job = dataclasses.replace(pred.job, mask_receptive_field=True)
    sink = ArraySink()
    sink.open(job.profile)
    streamed = np.asarray(run_local(job, sink))
    out = run_local_chunked(job, PartialGeoTIFFSink(tmp_path / "c.tif"), resume=True, chunk_size=16)
    chunked = _read(out)[0]
    assert np.array_equal(np.isnan(streamed), np.isnan(chunked))
    assert np.array_equal(streamed[~np.isnan(streamed)], chunked[~np.isnan(chunked)])
    layout = ChunkLayout.create(pred.plan, False, 16)
    assert fingerprint(job, layout) != fingerprint(pred.job, layout)  # a resume never mixes the two
