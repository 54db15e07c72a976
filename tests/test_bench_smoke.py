"""The benchmark must not rot: a tiny ``--quick`` run, and checks that its baselines write what tilecast writes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

from common import halo_windows  # noqa: E402
from models import macs_per_pixel  # noqa: E402
from tilecast.plan import TileGeometry, TilePlan  # noqa: E402


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_predict.py"), "--quick", "--size", "512", "--repeats", "1",
         "--data-dir", str(tmp / "data"), "--out-dir", str(tmp / "out"), "--timeout", "120"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp / "out", proc.stdout


def test_quick_run_reports_every_variant_and_ratio(quick_run):
    out, stdout = quick_run
    for text in ("Mpx/s", "peak RSS", "d/a =", "d/b =", "d/c =", "d(cosine)/a =", "MACs/pixel"):
        assert text in stdout
    summary = json.loads((out / "results.json").read_text())
    rows = {(r["model"], r["variant"]): r for r in summary["rows"]}
    expected = {("-", "b"), ("compute", "a"), ("compute", "c"), ("compute", "d"), ("compute", "d-cosine"),
                ("io", "a"), ("io", "c"), ("io", "d")}
    assert set(rows) == expected
    for row in rows.values():
        assert row["median_s"] > 0 and row["mpx_s"] > 0 and row["peak_rss_mib"] > 10
    assert {(r["model"], r["variant"], r["baseline"]) for r in summary["ratios"] if r["target"]} == {
        ("compute", "d", "a"), ("compute", "d-cosine", "a"), ("io", "d", "b")}


def test_baselines_write_the_same_cog_as_tilecast(quick_run):
    """The I/O limit and the hand-written loop are only fair if they write what GeoTIFFSink writes."""
    out, _ = quick_run
    with rasterio.open(out / "compute_d.tif") as d:
        d_profile, d_ovr, d_values = d.profile, d.overviews(1), d.read(1)
        d_layout = d.tags(ns="IMAGE_STRUCTURE")
    for name in ("io_b.tif", "compute_c.tif"):
        with rasterio.open(out / name) as ds:
            for key in ("driver", "dtype", "count", "width", "height", "crs", "transform", "blockxsize",
                        "blockysize", "tiled", "compress"):
                assert ds.profile[key] == d_profile[key], (name, key)
            assert np.isnan(ds.nodata) and np.isnan(d_profile["nodata"])
            assert ds.overviews(1) == d_ovr
            assert ds.tags(ns="IMAGE_STRUCTURE") == d_layout
    with rasterio.open(out / "compute_c.tif") as c:  # the same model by hand gives the same pixels
        np.testing.assert_allclose(c.read(1), d_values, rtol=1e-4, atol=1e-5)


def test_halo_windows_are_tilecasts_windows():
    for shape, tile, overlap in (((512, 512), 256, 16), ((300, 517), 128, 8), ((40, 33), 16, 3)):
        plan = TilePlan.create(shape, TileGeometry.create(tile, overlap))
        mine = list(halo_windows(*shape, tile, overlap))
        assert len(mine) == len(plan)
        for (read, pad, core), t in zip(mine, plan.tiles(), strict=True):
            assert read == (t.read.col_off, t.read.row_off, t.read.width, t.read.height)
            assert pad == t.pad
            assert core == (t.out.col_off, t.out.row_off, t.out.width, t.out.height)


def test_compute_model_is_about_30k_macs_per_pixel():
    assert 25_000 <= macs_per_pixel() <= 35_000


@pytest.mark.skipif(shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2,
                    reason="taskset (util-linux) pins the runs to 1 and 2 CPUs")
def test_scaling_benchmark_runs_and_reports_the_ratio(tmp_path):
    """bench_scaling.py on a small raster: both CPU sets run and the ratio line is printed (no timing checked)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_scaling.py"), "--size", "512", "--repeats", "1",
         "--data-dir", str(tmp_path / "data"), "--out-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, cwd=BENCH.parent,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"2 cores / 1 core = \d+\.\d\dx", proc.stdout), proc.stdout
    assert "profile: model" in proc.stdout
