"""Hostile or careless command lines (issue 17, items 5 and 7): each ends in one line that names the problem and the
fix, a non-zero exit status, and no file left behind; Ctrl-C and SIGTERM end a run within 2 s, even while the
endpoint client waits out a ``Retry-After``."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from click.testing import CliRunner

from onnx_models import mean_conv
from tilecast.cli import main

pytestmark = pytest.mark.adversarial

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_line_error(res, *words: str, code: int = 1) -> str:
    """The run failed with ``code``, said so in one ``Error:`` line holding ``words``, and printed no traceback."""
    assert res.exit_code == code, res.output
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, res.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir() if p.name.startswith("."))


@pytest.fixture
def scene(tmp_path, raster):
    return raster(np.random.default_rng(0).random((1, 60, 50)).astype("float32"))


@pytest.fixture
def model(tmp_path):
    return mean_conv(tmp_path / "m.onnx")


# ---- predict ---------------------------------------------------------------------------------------------------


def test_a_tile_that_cannot_fit_is_refused_before_any_file(tmp_path, scene, model):
    out = tmp_path / "out"
    out.mkdir()
    res = run("predict", scene, "-m", model, "--tile", "1000000000", "-o", out / "p.tif", "-q")
    one_line_error(res, "TileSizeError", "GiB", "--tile")
    assert list(out.iterdir()) == []


def test_a_warp_window_over_gdal_limit_is_refused(tmp_path, scene, model):
    res = run("predict", scene, "-m", model, "--tile", "30000", "--fix-input-proj", "--crs", "EPSG:32633",
              "--resolution", "10", "10", "-o", tmp_path / "w.tif", "-q")
    one_line_error(res, "TileSizeError", "2 GiB", "--tile")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("bounds", [("-inf", "-inf", "inf", "inf"), ("nan", "0", "1", "1")])
def test_non_finite_bounds_are_a_usage_error(tmp_path, scene, model, bounds):
    res = run("predict", scene, "-m", model, "--tile", "16", "--bounds", *bounds, "-o", tmp_path / "b.tif")
    assert res.exit_code == 2 and "finite" in res.stderr and "Traceback" not in res.output
    assert not (tmp_path / "b.tif").exists()
    res = run("export", "image", scene, "--patch", "8", "--bounds", *bounds, "-o", tmp_path / "e")
    assert res.exit_code == 2 and "finite" in res.stderr and "Traceback" not in res.output


def test_an_unknown_compression_is_a_usage_error(tmp_path, scene, model):
    res = run("predict", scene, "-m", model, "--tile", "16", "--compress", "BOGUS", "-o", tmp_path / "c.tif")
    assert res.exit_code == 2 and "BOGUS" in res.stderr
    res = run("predict", scene, "-m", model, "--tile", "16", "--compress", "zstd", "-o", tmp_path / "c.tif", "-q")
    assert res.exit_code == 0, res.output


def test_a_folder_that_cannot_be_written(tmp_path, scene, model, monkeypatch):
    import tilecast.sinks.geotiff as geotiff

    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / ".p.tif.tmp.tif"))

    monkeypatch.setattr(geotiff.tempfile, "mkstemp", denied)
    res = run("predict", scene, "-m", model, "--tile", "16", "-o", tmp_path / "p.tif", "-q")
    one_line_error(res, "OutputError", "Permission denied", "-o")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder(tmp_path, scene, model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        res = run("predict", scene, "-m", model, "--tile", "16", "-o", ro / "p.tif", "-q")
        one_line_error(res, "OutputError", "-o")
    finally:
        ro.chmod(stat.S_IRWXU)


def test_a_full_disk_mid_run(tmp_path, scene, model, monkeypatch):
    """A sink whose writes fail with ENOSPC (what a full disk gives): one line, the temporary file removed."""
    import tilecast.sinks.geotiff as geotiff

    calls = []

    def full(self, window, data):
        calls.append(window)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(geotiff.GeoTIFFSink, "write", full)
    res = run("predict", scene, "-m", model, "--tile", "16", "-o", tmp_path / "p.tif", "-q")
    one_line_error(res, "OutputError", "no space left", "-o")
    assert calls and leftovers(tmp_path) == [] and not (tmp_path / "p.tif").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 256 KiB tmpfs (root only; skipped where mounting is not allowed)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_a_real_full_disk(tmp_path, raster, model, tiny_disk):
    big = raster(np.random.default_rng(1).random((1, 600, 600)).astype("float32"))
    res = run("predict", big, "-m", model, "--tile", "64", "-o", tiny_disk / "p.tif", "-q")
    one_line_error(res, "OutputError", "disk")
    assert list(tiny_disk.iterdir()) == []


def test_a_huge_vrt_refused_by_gdal_free_space_check(tmp_path, scene, model):
    vrt = tmp_path / "huge.vrt"
    vrt.write_text(
        '<VRTDataset rasterXSize="3000000" rasterYSize="3000000"><SRS>EPSG:32633</SRS>'
        "<GeoTransform>500000, 10, 0, 4600000, 0, -10</GeoTransform>"
        '<VRTRasterBand dataType="Float32" band="1"><SimpleSource>'
        f'<SourceFilename relativeToVRT="0">{scene}</SourceFilename><SourceBand>1</SourceBand>'
        "</SimpleSource></VRTRasterBand></VRTDataset>"
    )
    out = tmp_path / "out"
    out.mkdir()
    res = run("predict", vrt, "-m", model, "--tile", "256", "-o", out / "h.tif", "-q")
    one_line_error(res, "OutputError", "space", "--bounds")
    assert list(out.iterdir()) == []


# ---- import ----------------------------------------------------------------------------------------------------


@pytest.fixture
def exported(tmp_path, scene):
    res = run("export", "image", scene, "--patch", "10", "-o", tmp_path / "exp", "-q")
    assert res.exit_code == 0, res.output
    folder = tmp_path / "exp"
    return sorted(folder.glob("*.tfrecord.gz"))[0], next(folder.glob("*-mixer.json"))


def _import(tmp_path, records, mixer, *extra):
    return run("import", records, "--mixer", mixer, "-o", tmp_path / "back.tif", "-q", *extra)


def test_import_round_trip_still_works(tmp_path, exported):
    records, mixer = exported
    res = _import(tmp_path, records, mixer)
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("offset", [0.3, 0.5, 0.8])
def test_import_a_bit_flipped_gzip(tmp_path, exported, offset):
    records, mixer = exported
    data = bytearray(records.read_bytes())
    data[int(len(data) * offset)] ^= 0x10
    bad = tmp_path / "bad.tfrecord.gz"
    bad.write_bytes(bytes(data))
    res = _import(tmp_path, bad, mixer)
    one_line_error(res, "InputError", "re-")
    assert not (tmp_path / "back.tif").exists() and leftovers(tmp_path) == []


def test_import_a_truncated_gzip_is_not_just_aborted(tmp_path, exported):
    records, mixer = exported
    bad = tmp_path / "cut.tfrecord.gz"
    bad.write_bytes(records.read_bytes()[: len(records.read_bytes()) // 2])
    res = _import(tmp_path, bad, mixer)
    one_line_error(res, "InputError", "truncated")
    assert "Aborted" not in res.output


def test_import_a_truncated_plain_tfrecord(tmp_path, exported):
    records, mixer = exported
    plain = gzip.decompress(records.read_bytes())
    bad = tmp_path / "cut.tfrecord"
    bad.write_bytes(plain[: len(plain) - 7])
    one_line_error(_import(tmp_path, bad, mixer), "InputError", "truncated")


@pytest.mark.parametrize("change", [
    {"patchDimensions": [0, 10]},
    {"patchDimensions": [-10, 10]},
    {"patchesPerRow": 0},
    {"patchesPerRow": -5},
    {"totalPatches": -30},
    {"patchDimensions": [10**12, 10]},
    {"patchesPerRow": 10**9, "totalPatches": 10**9},
    {"patchDimensions": ["a", 10]},
    {"projection": {"crs": "EPSG:32633", "affine": {"doubleMatrix": [10, 0, 500000]}}},
    {"projection": {"crs": "EPSG:32633", "affine": {"doubleMatrix": [0, 0, 500000, 0, 0, 4600000]}}},
    {"projection": {"crs": "EPSG:32633", "affine": {"doubleMatrix": [float("nan"), 0, 5, 0, -10, 4]}}},
    {"projection": {"crs": "EPSG:999999", "affine": {"doubleMatrix": [10, 0, 500000, 0, -10, 4600000]}}},
])
def test_import_bad_mixers(tmp_path, exported, change):
    records, mixer = exported
    m = json.loads(mixer.read_text())
    m.update(change)
    bad = tmp_path / "bad-mixer.json"
    bad.write_text(json.dumps(m))
    res = _import(tmp_path, records, bad)
    one_line_error(res, "Error")
    assert not (tmp_path / "back.tif").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("dtype", ["float99", "complex64", "object"])
def test_import_bad_dtype(tmp_path, exported, dtype):
    records, mixer = exported
    one_line_error(_import(tmp_path, records, mixer, "--dtype", dtype), "SpecError", "--dtype")


# ---- other commands --------------------------------------------------------------------------------------------


def test_predict_features_unknown_crs(tmp_path, scene, model):
    pytest.importorskip("geopandas")
    pts = tmp_path / "pts.csv"
    pts.write_text("id,WKT\n1,POINT (500100 4599900)\n")
    res = run("predict-features", pts, "--sample", scene, "-m", model, "-o", tmp_path / "f.parquet",
              "--output-property", "x", "--features-crs", "EPSG:999999", "-q")
    one_line_error(res, "UnknownCRSError", "EPSG")


@pytest.mark.parametrize("colors", ["zzzzzz", "0:#zzzzzz", "#12345", "0:#ff0000,#00ff00"])
def test_card_bad_colors(tmp_path, colors):
    from onnx_models import argmax_classes

    onnx = argmax_classes(tmp_path / "a.onnx", 2)
    res = run("card", onnx, "--tile", "16", "--bands", "B1=a,B2=b", "--output-band", "cls:uint8", "--classes",
              "a", "--colors", colors)
    one_line_error(res, "SpecError", "--colors")


def test_exports_honour_the_umask(tmp_path, scene):
    old = os.umask(0o027)
    try:
        res = run("export", "image", scene, "--patch", "10", "-o", tmp_path / "exp", "-q")
        assert res.exit_code == 0, res.output
        res = run("export", "image", scene, "--patch", "10", "-o", tmp_path / "exp2", "-q", "--no-compress")
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "exp").iterdir()] + [p for p in (tmp_path / "exp2").iterdir()]
    assert {p.suffix for p in files} >= {".gz", ".json", ".tfrecord"}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o640, (p, oct(p.stat().st_mode))


# ---- interrupts --------------------------------------------------------------------------------------------------


class _Busy(BaseHTTPRequestHandler):
    """A KServe v2 model that answers its metadata and then 503 with ``Retry-After: 100`` to every inference."""

    posts: ClassVar[list[float]] = []

    def do_GET(self):
        body = json.dumps({
            "name": "m", "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, -1, -1]}],
            "outputs": [{"name": "mean", "datatype": "FP32", "shape": [-1, 1, -1, -1]}],
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).posts.append(time.monotonic())
        self.send_response(503)
        self.send_header("Retry-After", "100")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def busy_endpoint():
    _Busy.posts = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v2/models/m"
    server.shutdown()
    server.server_close()


@pytest.mark.server
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_ends_a_retry_wait_at_once(tmp_path, scene, busy_endpoint, signum):
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "tilecast.cli", "predict", scene, "--endpoint", busy_endpoint, "--tile", "16",
           "-o", str(out / "p.tif"), "-q"]
    # SIGINT must reach the child even when the suite runs as a background job (which ignores SIGINT)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 60
        while not _Busy.posts and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert _Busy.posts, proc.communicate(timeout=5)
        time.sleep(0.3)  # the request threads are now waiting out Retry-After: 100
        sent = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    assert took < 2.0, (took, err)
    assert proc.returncode in (128 + signum, -signum), err  # exit status 130/143, or ended by the signal itself
    assert "Traceback" not in err and "Aborted" in err
    assert list(out.iterdir()) == []
