"""Review of the command line outside ``predict``'s body: the group, ``info``, ``prepare``, ``import``, the ``rio``
plugin's option handling, shared options, and the exit status of interrupted runs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_models import mean_conv
from test_adversarial_cli import SRC, one_line_error, run


@pytest.fixture
def scene(raster):
    return raster(np.random.default_rng(0).random((1, 40, 30)).astype("float32"))


# ---- --bounds-crs without --bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["crs_first", "crs_last"])
def test_bounds_crs_without_bounds_is_a_usage_error(tmp_path, scene, order):
    out = tmp_path / "o.tif"
    flags = ["--bounds-crs", "EPSG:4326"]
    rest = ["-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "-o", out, "-q"]
    args = ["predict", scene, *flags, *rest] if order == "crs_first" else ["predict", scene, *rest, *flags]
    res = run(*args)
    line = one_line_error(res, "--bounds-crs", "--bounds ", code=2)
    assert "L B R T" in line or "left bottom right top" in line
    assert not out.exists()


def test_bounds_crs_with_bounds_still_crops(tmp_path, scene):
    """The check must not refuse the pair: lon/lat bounds over the scene's UTM grid crop it."""
    import rasterio
    from rasterio.warp import transform_bounds

    with rasterio.open(scene) as ds:
        left, bottom, right, top = ds.bounds
    lonlat = transform_bounds("EPSG:32633", "EPSG:4326", left + 50, bottom + 50, right - 50, top - 50)
    out = tmp_path / "o.tif"
    res = run("predict", scene, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "-o", out, "-q",
              "--bounds-crs", "EPSG:4326", "--bounds", *lonlat)
    assert res.exit_code == 0, res.output
    with rasterio.open(out) as ds:
        assert ds.width < 30 and ds.height < 40


def test_view_shares_the_bounds_crs_check(tmp_path):
    # A missing image: without the check the run fails later, in the command (exit 1), instead of serving a map.
    res = run("view", tmp_path / "missing.tif", "--bounds-crs", "EPSG:4326", "--no-browser", "--port", "0")
    one_line_error(res, "--bounds-crs", "--bounds ", code=2)


# ---- interrupts: exit 130 / 143 even when a C extension wraps the KeyboardInterrupt -------------------------------


INTERRUPTED = """
import sys

import click

from tilecast.cli.options import Terminated, reports_errors
from tilecast.errors import OutputError

kind = Terminated if sys.argv[2] == "term" else KeyboardInterrupt


@click.command()
@click.argument("case")
@click.argument("signal")
@reports_errors
def work(case, signal):
    if case == "wrapped":  # what CPython makes of a handler raising inside a C function that then returns a value
        try:
            raise kind()
        except KeyboardInterrupt as exc:
            raise SystemError("<built-in function crc32c> returned a result with an exception set") from exc
    if case == "cleanup":  # a sink whose clean-up fails while the interrupt unwinds it
        try:
            raise kind()
        finally:
            raise OutputError("could not remove the temporary file")
    try:  # a plain error, for contrast
        raise ValueError("inner")
    except ValueError as exc:
        raise OutputError("disk full") from exc


work()
"""


@pytest.mark.parametrize("case", ["wrapped", "cleanup", "plain"])
@pytest.mark.parametrize(("which", "code"), [("int", 130), ("term", 143)])
def test_an_interrupt_wrapped_in_another_error_still_exits_as_interrupted(tmp_path, case, which, code):
    """Ctrl-C in ``tilecast import`` once ended in a SystemError traceback and exit 1: crc32c's C function returned
    while the signal handler's KeyboardInterrupt was pending. The interrupt is the cause, so the exit says so."""
    script = tmp_path / "interrupted.py"
    script.write_text(INTERRUPTED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), case, which], env=env, capture_output=True, text=True,
                         timeout=60)
    assert "Traceback" not in res.stderr, res.stderr
    if case == "plain":
        assert res.returncode == 1 and "OutputError: disk full" in res.stderr
    else:
        assert res.returncode == code and "Aborted!" in res.stderr, res.stderr


# ---- info -------------------------------------------------------------------------------------------------------


def test_info_describes_a_raster_without_georeferencing(tmp_path, raster):
    """``info`` is how one finds out that a raster lacks a CRS: it must describe it, not refuse it."""
    path = raster(np.arange(12 * 10, dtype="uint16").reshape(1, 12, 10), crs=None, descriptions=["red"])
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["crs"] is None and data["size"] == "10 x 12"
    assert data["bands"] == [{"band": 1, "name": "red", "dtype": "uint16", "nodata": None}]
    table = run("info", path)
    assert table.exit_code == 0 and "crs: None" in table.stdout


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_info_json_is_strict_json_with_nan_nodata(raster):
    """``NaN`` is not JSON (jq and JavaScript refuse it): a NaN nodata is written the way gdalinfo -json writes it."""
    path = raster(np.zeros((2, 20, 20), "float32"), nodata=float("nan"), descriptions=["a", "b"])
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    data = _strict_json(res.stdout)
    assert [b["nodata"] for b in data["bands"]] == ["NaN", "NaN"]
    table = run("info", path)
    assert "nan" in table.stdout


def test_info_json_keeps_finite_nodata_numbers(raster):
    path = raster(np.zeros((1, 20, 20), "float32"), nodata=-9999.5)
    data = _strict_json(run("info", path, "--json").stdout)
    assert data["bands"][0]["nodata"] == -9999.5 and not math.isnan(data["resolution"][0])


# ---- prepare ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    keras = pytest.importorskip("keras")
    pytest.importorskip("tensorflow")
    d = tmp_path_factory.mktemp("sm")
    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3), name="image")
    keras.Model(inp, keras.layers.Conv2D(2, 1, name="probs")(inp)).export(str(d / "src"), verbose=False)
    return d / "src"


def _prepare(source, dest, *extra):
    return run("prepare", "--source-dir", source, "--dest-dir", dest, "--input", "image", "--output", "output_0",
               "-q", *extra)


def test_prepare_into_a_missing_folder_is_one_clear_error(tmp_path, saved_model):
    """It was a FileNotFoundError traceback from os.replace, after the whole model had been saved in /tmp."""
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    res = _prepare(saved_model, tmp_path / "no" / "such" / "ee")
    one_line_error(res, "OutputError", str(tmp_path / "no" / "such"), "create it")
    assert not (tmp_path / "no").exists()
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith(".ee.")]


def test_prepared_model_folder_follows_the_umask(tmp_path, saved_model):
    """mkdtemp makes 0700 folders; renamed into place as it was, TF Serving running as another user (a container)
    could not read the model. It gets the mode a plain mkdir gives, as every other output does."""
    import stat

    old = os.umask(0o027)
    try:
        res = _prepare(saved_model, tmp_path / "ee")
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE((tmp_path / "ee").stat().st_mode) == 0o750
    assert (tmp_path / "ee" / "saved_model.pb").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ee"]


# ---- rio tilecast-predict ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rio_flags", "key", "value"), [
    (["--aws-no-sign-requests"], "AWS_NO_SIGN_REQUEST", "YES"),
    (["-vvv"], "CPL_DEBUG", True),
])
def test_rio_plugin_runs_in_rios_gdal_environment(tmp_path, scene, monkeypatch, rio_flags, key, value):
    """``rio --aws-no-sign-requests tilecast-predict s3://...`` (or --aws-profile, --aws-requester-pays, -vvv): rio
    puts these in a rasterio.Env for its commands to enter; the plugin ignored them, so an anonymous read of a public
    bucket failed for want of credentials."""
    import copy
    from importlib import import_module

    import rasterio
    from rasterio.rio.main import main_group

    from tilecast.errors import SpecError

    predict_cli = import_module("tilecast.cli.predict")  # the module: tilecast.cli.predict is also the command

    seen = {}

    def probe(*args, **kwargs):
        seen.update(rasterio.env.getenv())
        raise SpecError("probe")

    monkeypatch.setattr(predict_cli, "load_model", probe)
    rio = copy.copy(main_group)
    rio.commands = {**main_group.commands, predict_cli.rio_predict.name: predict_cli.rio_predict}
    res = CliRunner().invoke(rio, [*rio_flags, "tilecast-predict", scene, "-m", tmp_path / "m.onnx", "-o",
                                   tmp_path / "o.tif"])
    assert res.exit_code == 1 and "probe" in res.output, res.output
    assert seen.get(key) == value, seen
    assert seen.get("GDAL_DISABLE_READDIR_ON_OPEN") == "EMPTY_DIR"  # predict's own settings still apply on top


@pytest.mark.parametrize(("inputs", "outputs", "words"), [
    ('{"image": "a-b"}', "output_0", ["'a-b'", "letter"]),  # TF renamed it a_b: Earth Engine's key would not match
    ('{"image": "my input"}', "output_0", ["'my input'", "letter"]),  # was a ValueError traceback from TensorFlow
    ("image", '{"output_0": "a", "StatefulPartitionedCall:0": "b"}', ["output_0", "once"]),  # 'a' was dropped
    ('{"image": "x", "serving_default_image:0": "y"}', "output_0", ["image", "once"]),
])
def test_prepare_refuses_names_it_would_silently_change_or_drop(tmp_path, saved_model, inputs, outputs, words):
    from tilecast.errors import SpecError
    from tilecast.serve.prepare import prepare_model

    with pytest.raises(SpecError) as info:
        prepare_model(saved_model, tmp_path / "ee", inputs, outputs)
    for word in words:
        assert word in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_prepare_refuses_one_earth_engine_name_for_two_outputs(tmp_path, saved_model):
    """Two outputs under one name collapsed into one key of the wrapped signature: one output was silently lost."""
    keras = pytest.importorskip("keras")
    from tilecast.errors import SpecError
    from tilecast.serve.prepare import prepare_model

    inp = keras.Input((None, None, 3), name="image")
    two = keras.Model(inp, [keras.layers.Conv2D(1, 1)(inp), keras.layers.Conv2D(2, 1)(inp)])
    two.export(str(tmp_path / "two"), verbose=False)
    with pytest.raises(SpecError, match=r"'probs'.*once"):
        prepare_model(tmp_path / "two", tmp_path / "ee", "image", '{"output_0": "probs", "output_1": "probs"}')
    assert not (tmp_path / "ee").exists()
    prepare_model(tmp_path / "two", tmp_path / "ee", "image", '{"output_0": "a", "output_1": "b"}')
    import tensorflow as tf

    assert sorted(tf.saved_model.load(str(tmp_path / "ee")).signatures["serving_default"].structured_outputs) == [
        "a", "b"]


# ---- info: .h5 is both a Keras model and an HDF5 raster ----------------------------------------------------------


def test_info_describes_an_hdf5_raster_named_h5(tmp_path):
    """NASA granules (SMAP, VIIRS, GEDI...) are .h5 files GDAL opens; info took every .h5 for a Keras model."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "granule.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("temperature", data=np.arange(200, dtype="float32").reshape(10, 20))
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["driver"].startswith("HDF5") and data["size"] == "20 x 10"
    assert data["bands"][0]["dtype"] == "float32"


def test_info_still_opens_a_keras_h5_model(tmp_path):
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    inp = keras.Input((4, 4, 3), name="image")
    keras.Model(inp, keras.layers.Conv2D(2, 1)(inp)).save(tmp_path / "model.h5")
    res = run("info", tmp_path / "model.h5", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["format"] == "keras" and [i["shape"] for i in data["inputs"]] == ["?x4x4x3"]


def test_non_finite_bounds_are_a_usage_error_naming_bounds_crs(tmp_path, scene):
    """Every command with --bounds also has --bounds-crs (export image since this review), and the message says so."""
    res = run("export", "image", scene, "--patch", "10", "--bounds", "nan", "0", "1", "1", "-o", tmp_path / "e")
    one_line_error(res, "--bounds-crs", "finite", code=2)
    res = run("predict", scene, "-m", tmp_path / "m.onnx", "--bounds", "inf", "0", "1", "1", "-o", tmp_path / "o.tif")
    one_line_error(res, "--bounds-crs", "finite", code=2)


# ---- interrupts of real runs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported_scene(tmp_path_factory):
    from conftest import write_raster

    d = tmp_path_factory.mktemp("exported")
    src = write_raster(d / "scene.tif", np.random.default_rng(1).random((1, 2000, 2000)).astype("float32"))
    res = run("export", "image", src, "--patch", "16", "-o", d / "exp", "-q")
    assert res.exit_code == 0, res.output
    return src, d / "exp"


@pytest.mark.parametrize("command", ["import", "export"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_import_and_export_exit_130_143_and_leave_nothing(tmp_path, exported_scene, command, signum):
    """The two long commands without an interrupt test of their own: 130 / 143, "Aborted!", no file left. (Ctrl-C in
    ``import`` could end in crc32c's SystemError traceback and exit 1; that race is pinned down above.)"""
    src, exp = exported_scene
    out = tmp_path / "out"
    out.mkdir()
    if command == "import":
        args = ["import", *sorted(map(str, exp.glob("*.tfrecord.gz"))), "--mixer", str(exp / "scene-mixer.json"),
                "-o", str(out / "back.tif")]
    else:
        args = ["export", "image", src, "--patch", "16", "-o", str(out)]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Ctrl-C must reach the child even when the suite runs as a background job (which ignores SIGINT)
    code = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); " \
           "from tilecast.cli import main; main(sys.argv[1:], prog_name='tilecast')"
    with subprocess.Popen([sys.executable, "-c", code, *args], env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline()  # the first progress line: the run is under way
            assert "patches" in line, line + proc.stderr.read()
            proc.send_signal(signum)
            err = proc.stderr.read()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode in (128 + signum, -signum), err  # exit 130/143, or ended by the signal itself
    assert "Traceback" not in err and "Aborted!" in err
    assert sorted(p.name for p in out.iterdir()) == []


def test_info_lists_the_subdatasets_of_a_container(tmp_path):
    """A file of several arrays (HDF5, NetCDF) opens with no bands: info names the subdatasets to give instead."""
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "granule.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("temperature", data=np.zeros((10, 20), "float32"))
        f.create_dataset("quality", data=np.zeros((10, 20), "uint8"))
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["bands"] == [] and len(data["subdatasets"]) == 2
    assert any(s.endswith("temperature") for s in data["subdatasets"])
    assert "Warning" not in res.stderr  # rasterio's NotGeoreferencedWarning: the crs line already says it
    table = run("info", path)
    assert table.exit_code == 0 and "subdatasets" in table.stdout


def test_info_takes_a_text_savedmodel_folder_for_a_model(tmp_path):
    """A SavedModel may hold saved_model.pbtxt instead of saved_model.pb (Model.load takes both); info sent such a
    folder to GDAL, which answered that it is not a raster."""
    folder = tmp_path / "text_model"
    folder.mkdir()
    (folder / "saved_model.pbtxt").write_text("saved_model_schema_version: 1\n")
    res = run("info", folder)
    line = one_line_error(res)
    assert "GDAL" not in line and "raster" not in line
    assert "ModelLoadError" in line or "tilecast[tf]" in line
