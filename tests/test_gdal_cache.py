"""GDAL's block cache during a run: sized to what overlapping reads need, smaller for one-pass steps, and never
changed when the user set it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio
from rasterio._env import get_gdal_config

from tilecast import Model
from tilecast.resources import (
    GDAL_CACHE_BYTES,
    ONE_PASS_CACHE_BYTES,
    Resources,
    gdal_cache_bytes,
    one_pass_gdal_cache,
)


def _seen_cache(model_fn_holder: list) -> object:
    def fn(x):
        model_fn_holder.append(get_gdal_config("GDAL_CACHEMAX"))
        return x[:, :1]

    return fn


def test_the_run_caches_the_block_rows_a_row_of_tiles_touches(raster, tmp_path):
    img = np.zeros((3, 1200, 3000), np.uint16)
    src = raster(img)  # 16 x 16 blocks (conftest)
    seen: list = []
    model = Model.from_callable(_seen_cache(seen), input_tile_size=256, input_overlap_size=40, layout="NCHW",
                                output_bands={"y": "float32"})
    pred = model.predict_image(src)
    rows = (math.ceil((256 + 80) / 16) + 1) * 16
    need = Resources.detect().read_threads * rows * 3000 * 3 * 2 + 2 * 256 * 3000 * 4
    assert gdal_cache_bytes(pred.job) == max(64 * 2**20, int(1.5 * need))
    pred.to_geotiff(tmp_path / "out.tif", progress=False)
    assert seen and all(v == gdal_cache_bytes(pred.job) for v in seen)


def test_a_wide_raster_gets_more_than_the_flat_default(raster):
    src = raster(np.zeros((4, 64, 30000), np.uint16))
    model = Model.from_callable(lambda x: x[:, :1], input_tile_size=512, input_overlap_size=64, layout="NCHW",
                                output_bands={"y": "float32"})
    with rasterio.open(src) as ds:
        assert ds.block_shapes[0] == (16, 16)
    # 16-row blocks: (640 / 16 + 1) * 16 = 656 rows of 30000 x 4 x 2 bytes per reader
    assert gdal_cache_bytes(model.predict_image(src).job) > 656 * 30000 * 8


def test_warped_inputs_keep_the_default_cap(raster):
    src = raster(np.zeros((1, 64, 64), np.float32))
    model = Model.from_callable(lambda x: x, input_tile_size=32, output_bands={"y": "float32"}, layout="NCHW",
                                crs="EPSG:3035", resolution=20, fix_input_proj=True)
    assert gdal_cache_bytes(model.predict_image(src).job) == GDAL_CACHE_BYTES


def test_a_users_gdal_cachemax_is_left_alone(raster, monkeypatch):
    """Set in the environment (GDAL read it when the process started: the run keeps whatever the cache is) or with
    rasterio.Env (the run uses that value)."""
    src = raster(np.ones((1, 40, 40), np.float32))
    seen: list = []
    model = Model.from_callable(_seen_cache(seen), input_tile_size=16, layout="NCHW", output_bands={"y": "float32"})
    monkeypatch.setenv("GDAL_CACHEMAX", "123456789")
    before = get_gdal_config("GDAL_CACHEMAX")
    model.predict_image(src).to_numpy()
    assert seen and all(v == before for v in seen)
    monkeypatch.delenv("GDAL_CACHEMAX")
    seen.clear()
    with rasterio.Env(GDAL_CACHEMAX=123 * 2**20):
        model.predict_image(src).to_numpy()
    assert seen and all(v == 123 * 2**20 for v in seen)


@pytest.mark.parametrize(("before", "inside"), [(300 * 2**20, ONE_PASS_CACHE_BYTES), (32 * 2**20, 32 * 2**20)])
def test_one_pass_steps_only_ever_lower_the_cache(before, inside):
    with rasterio.Env(GDAL_CACHEMAX=before):
        with one_pass_gdal_cache():
            assert get_gdal_config("GDAL_CACHEMAX") == inside
        assert get_gdal_config("GDAL_CACHEMAX") == before


def test_the_cli_run_gets_the_cache_sized_to_it_unless_configured(raster, tmp_path, monkeypatch):
    """`tilecast predict` must not put its own GDAL_CACHEMAX around the run (it would count as the user's)."""
    from click.testing import CliRunner

    import tilecast.runners.local as local
    from onnx_models import mean_conv
    from tilecast.cli import main as cli

    seen: list = []
    original = local.run_local

    def spy(job, sink, *args, **kwargs):
        seen.append((get_gdal_config("GDAL_CACHEMAX"), gdal_cache_bytes(job)))
        return original(job, sink, *args, **kwargs)

    monkeypatch.setattr(local, "run_local", spy)
    src = raster(np.random.default_rng(3).random((1, 64, 64)).astype("float32"))
    onnx = mean_conv(tmp_path / "m.onnx", 1, 3)
    base = ["predict", src, "--model", onnx, "--tile", "16", "--overlap", "1", "-q", "--overwrite"]
    result = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "a.tif")])
    assert result.exit_code == 0, result.output
    assert seen[-1][0] == seen[-1][1]
    result = CliRunner().invoke(cli, [*base, "--config", "GDAL_CACHEMAX=300", "-o", str(tmp_path / "b.tif")])
    assert result.exit_code == 0, result.output
    assert seen[-1][0] == 300 * 2**20


def test_the_run_cache_follows_the_policys_readers_and_floor(raster):
    src = raster(np.zeros((3, 1200, 3000), np.uint16))
    model = Model.from_callable(lambda x: x[:, :1], input_tile_size=256, input_overlap_size=40, layout="NCHW",
                                output_bands={"y": "float32"})
    job = model.predict_image(src).job
    rows = (math.ceil((256 + 80) / 16) + 1) * 16
    for readers in (1, 3):
        need = readers * rows * 3000 * 3 * 2 + 2 * 256 * 3000 * 4
        res = Resources.detect(cpus=8, read_threads=readers, run_cache_floor=0)
        assert gdal_cache_bytes(job, res) == int(1.5 * need)
    assert gdal_cache_bytes(job, Resources.detect(run_cache_floor=2**30)) == 2**30
