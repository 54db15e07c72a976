"""Memory flat in width (issue 17, item 6): outputs too wide for the assembly budget are assembled and written in
column bands; the result must be bit for bit the full-width one (pixels, overviews, metadata)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import rasterio

from conftest import coord_image
from tilecast import Model
from tilecast.resources import Resources
from tilecast.runners.local import output_bands_of, run_local
from tilecast.sinks.geotiff import GeoTIFFSink
from tilecast.sinks.overviews import OverviewWriter

pytestmark = pytest.mark.adversarial


def _box(x):
    """A 3 x 3 box sum per band plus the band mean: every output pixel depends on its neighbours."""
    s = x.astype("float32")
    out = s.copy()
    out[..., 1:-1, 1:-1] = sum(s[..., 1 + dy : s.shape[-2] - 1 + dy, 1 + dx : s.shape[-1] - 1 + dx]
                               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    return np.concatenate([out[:, :1], out.mean(axis=1, keepdims=True)], axis=1)


def _box_pooled(x):
    y = _box(x)
    n, c, h, w = y.shape
    return y.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from conftest import write_raster

    img = coord_image(150, 1100, 3) % 997
    img[:, 40:70, 300:420] = -1  # masked in every band: skipped and partial tiles
    img[1, 100:104, 630:700] = -1  # masked in one band
    return write_raster(tmp_path_factory.mktemp("wide") / "wide.tif", img, nodata=-1)


def _digest(path):
    with rasterio.open(path) as ds:
        meta = (ds.profile, ds.tags(), ds.descriptions, ds.overviews(1), ds.block_shapes, ds.compression)
        levels = [ds.read().tobytes(), ds.read_masks().tobytes()]
    for i in range(len(meta[3])):
        with rasterio.open(path, overview_level=i) as ov:
            levels.append(ov.read().tobytes())
    return meta, levels


def _run(pred, path, resources):
    sink = GeoTIFFSink(path)
    sink.open(pred.job.profile)
    return run_local(pred.job, sink, resources=resources)


CASES = {
    "crop": dict(input_tile_size=20, input_overlap_size=2),
    "crop-scaled": dict(input_tile_size=32, output_tile_size=16, input_overlap_size=4),
    "cosine": dict(input_tile_size=24, input_overlap_size=4, blend="cosine"),
    "hann": dict(input_tile_size=24, input_overlap_size=4, blend="hann"),
}


@pytest.mark.parametrize("unit", [64, 512])
@pytest.mark.parametrize("case", list(CASES))
def test_column_bands_give_the_full_width_bits(tmp_path, scene, case, unit, monkeypatch):
    kwargs = dict(CASES[case])
    append = case == "crop"
    fn = _box_pooled if "output_tile_size" in kwargs else _box
    model = Model.from_callable(fn, layout="NCHW", output_bands={"s": "float32", "m": "float32"}, **kwargs)
    pred = model.predict_image(scene, append_input=append)
    narrow = Resources.detect(assembly_bytes=1, band_unit=unit)
    bands = output_bands_of(pred.job, GeoTIFFSink(tmp_path / "probe.tif"), narrow)
    assert len(bands) >= 2 and bands[0][0] == 0 and bands[-1][1] == pred.plan.output_shape[1]
    assert all(b0 % unit == 0 for b0, _ in bands)
    assert output_bands_of(pred.job, GeoTIFFSink(tmp_path / "probe.tif"), Resources.detect()) == [
        (0, pred.plan.output_shape[1])]
    streamed = []
    finish = OverviewWriter.finish

    def spy(self):
        streamed.append(finish(self))
        return streamed[-1]

    monkeypatch.setattr(OverviewWriter, "finish", spy)
    full = _digest(_run(pred, tmp_path / "full.tif", Resources.detect()))
    banded = _digest(_run(pred, tmp_path / "banded.tif", narrow))
    assert streamed == [True, True]  # the first overview level was streamed both times
    assert repr(full[0]) == repr(banded[0])
    assert len(full[1]) >= 3
    for a, b in zip(full[1], banded[1], strict=True):
        assert a == b


def test_banded_progress_ends_at_the_plan_size(tmp_path, scene):
    model = Model.from_callable(_box, layout="NCHW", input_tile_size=24, input_overlap_size=4, blend="cosine",
                                output_bands={"s": "float32", "m": "float32"})
    pred = model.predict_image(scene)
    seen = []
    sink = GeoTIFFSink(tmp_path / "o.tif")
    sink.open(pred.job.profile)
    run_local(pred.job, sink, progress=lambda d, t, p: seen.append((d, t)),
              resources=Resources.detect(assembly_bytes=1, band_unit=64))
    assert seen[-1] == (len(pred.plan), len(pred.plan))
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(seen))
