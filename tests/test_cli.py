"""The command line: parses, reports, and calls the same API users call."""

from __future__ import annotations

import json

import numpy as np
import rasterio
from click.testing import CliRunner

from onnx_models import argmax_classes, mean_conv
from tilecast.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_predict_writes_a_cog_and_reports_progress(tmp_path, raster):
    img = np.random.default_rng(0).random((2, 90, 70)).astype("float32")
    src = raster(img)
    onnx = argmax_classes(tmp_path / "a.onnx", 2)
    out = tmp_path / "out.tif"
    res = run("predict", src, "--model", onnx, "--tile", "32", "--overlap", "2", "--output-band", "cls:uint8",
              "--classes", "0=low,1=high", "-o", out)
    assert res.exit_code == 0, res.output
    assert "tiles" in res.stderr and "Mpx/s" in res.stderr and "ETA" in res.stderr
    lines = res.stderr.splitlines()  # after the last tile: what happens next, then where the output is
    assert lines[-2:] == ["predict: building the Cloud-Optimized GeoTIFF (overviews, compression)", f"wrote {out} "
                          "(70 x 90 px, 1 band(s))"]
    with rasterio.open(out) as ds:
        assert ds.dtypes == ("uint8",) and ds.descriptions == ("cls",)
        assert json.loads(ds.tags(1)["class_names"]) == {"0": "low", "1": "high"}
        np.testing.assert_array_equal(ds.read(1), img.argmax(0))


def test_quiet_and_overwrite(tmp_path, raster):
    src = raster(np.ones((1, 40, 40), "float32"))
    onnx = mean_conv(tmp_path / "m.onnx")
    out = tmp_path / "out.tif"
    res = run("predict", src, "-m", onnx, "--tile", "16,8", "--overlap", "2", "-o", out, "-q")
    assert res.exit_code == 0 and res.stderr == ""
    res = run("predict", src, "-m", onnx, "--tile", "16", "-o", out, "-q")
    assert res.exit_code == 1 and "OutputExistsError" in res.stderr and "--overwrite" in res.stderr
    res = run("predict", src, "-m", onnx, "--tile", "16", "-o", out, "-q", "--overwrite", "--blend", "cosine",
              "--overlap", "4", "--output-band", "mean:float32")
    assert res.exit_code == 0, res.output


def test_errors_are_one_line_not_a_traceback(tmp_path, raster):
    onnx = mean_conv(tmp_path / "m.onnx")
    res = run("predict", tmp_path / "missing.tif", "-m", onnx, "--tile", "16", "-o", tmp_path / "o.tif")
    assert res.exit_code == 1 and "SourceNotFoundError" in res.stderr and "Traceback" not in res.output
    res = run("predict", raster(np.ones((1, 8, 8), "float32")), "-m", onnx, "--tile", "16", "-o",
              tmp_path / "o.tif", "--output-band", "x")
    assert res.exit_code == 1 and "NAME:DTYPE" in res.stderr
    res = run("predict", raster(np.ones((1, 8, 8), "float32")), "--tile", "16", "-o", tmp_path / "o.tif")
    assert res.exit_code == 1 and "--model" in res.stderr


def test_bounds_crs_and_warp_flags(tmp_path, raster):
    src = raster(np.random.default_rng(1).random((1, 60, 60)).astype("float32"))
    onnx = mean_conv(tmp_path / "m.onnx")
    out = tmp_path / "w.tif"
    res = run("predict", src, "-m", onnx, "--tile", "16", "--overlap", "2", "-o", out, "-q",
              "--crs", "EPSG:3035", "--resolution", "20", "20", "--fix-input-proj", "--resampling", "nearest",
              "--bounds", "500100", "4599500", "500400", "4599900")
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 3035 and ds.res == (20, 20)


def test_info_describes_rasters_and_models(tmp_path, raster):
    src = raster(np.ones((2, 20, 30), "uint16"), descriptions=["red", "nir"])
    res = run("info", src)
    assert res.exit_code == 0 and "red" in res.output and "EPSG:32633" in res.output and "30 x 20" in res.output
    res = run("info", src, "--json")
    data = json.loads(res.output)
    assert [b["name"] for b in data["bands"]] == ["red", "nir"]
    res = run("info", mean_conv(tmp_path / "m.onnx", 3), "--json")
    data = json.loads(res.output)
    assert data["inputs"][0]["shape"] == "Nx3xHxW".replace("N", "?").replace("H", "?").replace("W", "?")
    assert data["outputs"][0]["name"] == "mean"
    res = run("--help")
    assert "predict" in res.output and "info" in res.output


def test_sigterm_mid_run_leaves_no_files(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import write_raster

    src = write_raster(tmp_path / "big.tif", np.random.default_rng(3).random((1, 3000, 3000)).astype("float32"))
    onnx = mean_conv(tmp_path / "m.onnx", 1, 7)
    out = tmp_path / "out" / "o.tif"
    out.parent.mkdir()
    exe = os.path.join(os.path.dirname(sys.executable), "tilecast")
    proc = subprocess.Popen([exe, "predict", src, "-m", onnx, "--tile", "32", "--overlap", "3", "--batch-size", "1",
                             "-o", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "tiles" not in proc.stderr.readline():
        pass
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == 128 + signal.SIGTERM
    assert os.listdir(out.parent) == []


def test_card_info_predict_round_trip_needs_no_flags(tmp_path, raster):
    img = np.random.default_rng(5).random((2, 70, 50)).astype("float32")
    src = raster(img, descriptions=["red", "nir"])
    onnx = argmax_classes(tmp_path / "a.onnx", 2)
    flagged, bare = tmp_path / "flagged.tif", tmp_path / "bare.tif"
    flags = ["--tile", "32", "--overlap", "2", "--output-band", "cls:uint8"]
    assert run("predict", src, "-m", onnx, *flags, "--bands", "red,nir", "-o", flagged, "-q").exit_code == 0
    res = run("card", onnx, "--bands", "red,nir", *flags, "--classes", "0=bare,1=green")
    assert res.exit_code == 0, res.output
    info = run("info", onnx)
    assert info.exit_code == 0 and "red" in info.output and "32" in info.output
    res = run("predict", src, "-m", onnx, "-o", bare, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(flagged) as a, rasterio.open(bare) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile
        assert json.loads(b.tags(1)["class_names"]) == {"0": "bare", "1": "green"}


def test_predict_help_is_grouped_into_sections():
    res = run("predict", "--help")
    assert res.exit_code == 0
    titles = [line for line in res.output.splitlines() if line and not line.startswith(" ") and line.endswith(":")]
    assert titles[-7:] == ["Input:", "Model and tiling:", "Output:",
                           "Vector output (-o .gpkg, .parquet, .fgb, .geojson, .shp):", "Engine:",
                           "Endpoint (a hosted model instead of --model):", "Other options:"]
    section = res.output.split("Output:\n")[1].split("\n\n")[0]
    assert "--colors" in section and "--output-band" in section and "--tile" not in section
    other = res.output.split("Other options:\n")[1]
    assert "--help" in other and "--tile" not in other and "--endpoint" not in other


CORE_ONLY = """
import sys
for m in {blocked!r}:
    sys.modules[m] = None  # as if not installed: importing it raises ImportError
from tilecast.cli import main
main(sys.argv[1:], prog_name="tilecast")
"""

EXTRA_MODULES = ["xarray", "rioxarray", "odc", "dask", "distributed", "bokeh", "zarr", "torch", "tensorflow", "keras",
                 "pystac", "stac_model", "jsonschema", "onnx", "starlette", "uvicorn", "httptools", "uvloop", "httpx",
                 "prometheus_client", "grpc", "google.auth", "geopandas", "pyogrio", "pyarrow", "shapely", "fiona",
                 "matplotlib", "scipy", "rio_tiler", "morecantile", "PIL", "ipyleaflet"]


def test_a_core_only_install_names_the_extra_each_command_needs(tmp_path, raster):
    """``pip install tilecast`` alone: every command either works or names ``tilecast[EXTRA]``, never a traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = raster(np.ones((1, 20, 20), "float32"))
    onnx = mean_conv(tmp_path / "m.onnx")
    pts = tmp_path / "pts.csv"
    pts.write_text("id,WKT\n1,POINT (500050 4599950)\n")
    script = tmp_path / "core.py"
    script.write_text(CORE_ONLY.format(blocked=EXTRA_MODULES))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    cases = {
        ("predict", src, "-m", onnx, "--tile", "16", "-o", tmp_path / "p.tif", "-q"): None,
        ("info", src): None,
        ("export", "image", src, "--patch", "10", "-o", tmp_path / "e", "-q"): None,
        ("serve", onnx, "--port", "0"): "server",
        ("card", onnx, "--tile", "16", "--bands", "B1=a"): "card",
        ("predict-features", pts, "--sample", src, "-m", onnx, "--output-property", "x", "-o",
         tmp_path / "f.parquet"): "features",
        ("export", "samples", src, "--labels", pts, "--label-field", "id", "-o", tmp_path / "s.csv"): "features",
        ("predict", src, "-m", onnx, "--tile", "16", "-o", tmp_path / "d.tif", "--engine", "dask"): "dask",
        ("predict", src, "--endpoint", "http://127.0.0.1:9/v2/models/m", "--tile", "16", "-o",
         tmp_path / "h.tif"): "server",
        ("view", src): "view",
        ("prepare", "--source-dir", tmp_path, "--dest-dir", tmp_path / "pp", "--input", '{"a:0": "x"}', "--output",
         '{"b:0": "y"}'): "tf",
        ("polygonize", raster(np.ones((1, 20, 20), "uint8")), "-o", tmp_path / "p.gpkg"): "features",
    }
    for args, extra in cases.items():
        res = subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                             timeout=120)
        assert "Traceback" not in res.stderr, (args, res.stderr)
        if extra is None:
            assert res.returncode == 0, (args, res.stderr)
        else:
            assert res.returncode == 1 and f"tilecast[{extra}]" in res.stderr, (args, res.stderr)
