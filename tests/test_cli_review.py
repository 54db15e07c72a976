"""The command line's review: malformed flag values are usage errors that name the flag, never a traceback."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_models import mean_conv
from tilecast.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.parametrize("flag, value", [
    ("--timeout", "-1"), ("--timeout", "0"), ("--concurrency", "0"), ("--max-payload-bytes", "0"),
    ("--output-multiplier", "0.5"),
])
@pytest.mark.parametrize("command", ["predict", "predict-features"])
def test_bad_endpoint_request_values_are_usage_errors(tmp_path, command, flag, value):
    res = run(command, tmp_path / "in.tif", "--endpoint", "http://127.0.0.1:9", "-o", tmp_path / "o.tif",
              flag, value)
    assert res.exit_code == 2 and flag in res.output, res.output
    assert not isinstance(res.exception, Exception) or isinstance(res.exception, SystemExit)
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("value", ["x:abc", "x:-1", "x:0", "x:", "x:1.5"])
@pytest.mark.parametrize("command", ["predict", "view"])
def test_bad_input_shape_depth_is_a_usage_error(tmp_path, raster, command, value):
    src = raster(np.ones((1, 20, 20), "float32"))
    extra = ["-o", tmp_path / "o.tif"] if command == "predict" else ["--no-browser"]  # view: refused before serving
    res = run(command, src, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "--input-shape", value, *extra)
    assert res.exit_code == 2 and "--input-shape" in res.output and "x:4" in res.output, res.output
    assert isinstance(res.exception, SystemExit)


@pytest.mark.parametrize("value", ["lots", "0", "-1GiB", "12 parsecs"])
def test_bad_memory_budget_is_a_usage_error_even_with_a_fixed_tile(tmp_path, raster, value):
    src = raster(np.ones((1, 20, 20), "float32"))
    out = tmp_path / "o.tif"
    res = run("predict", src, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "--memory-budget", value,
              "-o", out, "-q")
    assert res.exit_code == 2 and "--memory-budget" in res.output and "2GiB" in res.output, res.output
    assert not out.exists()


def test_good_memory_budget_and_input_shape_still_run(tmp_path, raster):
    src = raster(np.ones((1, 20, 20), "float32"))
    res = run("predict", src, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "auto", "--memory-budget", " 2 GiB ",
              "-o", tmp_path / "o.tif", "-q")
    assert res.exit_code == 0, res.output
