"""Round 10 of the command-line review: items earlier reviews noticed and left alone (inherited ignored signals,
upper-case raster suffixes in a glob of inputs, class names of a categorical input, what a Dask run that fails
part-way leaves behind), and what was met on the way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import coord_image, write_raster
from test_adversarial_cli import SRC, one_line_error, run
from tilecast.sources import open_source

# ---- a signal the parent asked to ignore stays ignored --------------------------------------------------------------


IGNORED = """
import os, signal, sys

import click

from tilecast.cli.options import reports_errors

signum = getattr(signal, sys.argv[1])


@click.command()
@reports_errors
def work():
    os.kill(os.getpid(), signum)  # delivered at once, to this (main) thread
    click.echo("finished")


work(args=[], standalone_mode=False)
print("handler after the run:", signal.getsignal(signum) is signal.SIG_IGN)
"""


def _ignore(*signums):
    def preexec() -> None:
        for s in signums:
            signal.signal(s, signal.SIG_IGN)

    return preexec


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_a_signal_inherited_as_ignored_does_not_interrupt_the_run(tmp_path, name):
    """Symptom: ``tilecast predict ... &`` in a script (a background job of a shell without job control, which
    ignores SIGINT), or a run whose supervisor set SIGTERM to SIG_IGN, was still ended by the signal the parent had
    asked to ignore: the CLI replaced SIG_IGN with its own handler. (``nohup`` ignores SIGHUP, which the CLI now
    catches too: nohup must keep working.)"""
    script = tmp_path / "ignored.py"
    script.write_text(IGNORED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), name], env=env, capture_output=True, text=True, timeout=60,
                         preexec_fn=_ignore(signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    assert res.returncode == 0 and "finished" in res.stdout, (res.returncode, res.stdout, res.stderr)
    assert "handler after the run: True" in res.stdout, res.stdout


def test_a_signal_not_ignored_still_interrupts_the_run(tmp_path):
    """The contrast: with SIGINT ignored but SIGTERM not, SIGTERM still ends the run with 143 and "Aborted!"."""
    script = tmp_path / "ignored.py"
    script.write_text(IGNORED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), "SIGTERM"], env=env, capture_output=True, text=True,
                         timeout=60, preexec_fn=_ignore(signal.SIGINT))
    assert res.returncode == 128 + signal.SIGTERM and "Aborted!" in res.stderr, (res.returncode, res.stderr)
    assert "finished" not in res.stdout


# ---- a glob of rasters matches their suffix in any case -------------------------------------------------------------


def _strip(folder, names, first=0):
    """Side-by-side 1-band rasters, 20 x 20 px of 10 m, the k-th (from ``first``) filled with k + 1, in the given
    file names."""
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(names, start=first):
        write_raster(folder / name, np.full((1, 20, 20), k + 1, "float32"),
                     transform=from_origin(500000.0 + 200 * k, 4600000.0, 10.0, 10.0))


def test_a_glob_of_rasters_matches_upper_case_suffixes(tmp_path):
    """Symptom: 'scenes/*.tif' skipped Landsat's B.TIF on Linux (not on Windows or macOS), so the mosaic silently
    had a hole where that member lay; the pixels now cover all three members, in sorted order."""
    _strip(tmp_path / "scenes", ["a.tif", "b.TIF", "c.Tif"])
    (tmp_path / "scenes" / "notes.txt").write_text("not a raster")
    src = open_source(str(tmp_path / "scenes" / "*.tif"))
    assert [m.files[0].rsplit(os.sep, 1)[1] for m in src.members] == ["a.tif", "b.TIF", "c.Tif"]
    pixels, mask = src.read(Window(0, 0, 60, 20))
    expected = np.repeat(np.array([1.0, 2.0, 3.0], "float32"), 20)[None, None, :].repeat(20, axis=1)
    np.testing.assert_array_equal(pixels, expected)
    assert mask is None or mask.all()
    (tmp_path / "scenes" / "b.TIF").rename(tmp_path / "scenes" / "b.TIFF")
    assert [m.files[0].rsplit(os.sep, 1)[1] for m in open_source(str(tmp_path / "scenes" / "*.tif*")).members] == [
        "a.tif", "b.TIFF", "c.Tif"]
    assert open_source(str(tmp_path / "scenes" / "[ab].tif")).path.endswith("a.tif")  # a class in the name still works


def test_a_literal_path_holding_glob_characters_is_read_as_it_is(tmp_path):
    """Symptom: 'run[1]/scene.tif' (or x[2].tif) was taken for a pattern, which never matches itself: "no raster
    matches"."""
    _strip(tmp_path / "run[1]", ["x[2].tif"])
    src = open_source(str(tmp_path / "run[1]" / "x[2].tif"))
    pixels, _ = src.read(Window(0, 0, 20, 20))
    assert pixels.shape == (1, 20, 20) and (pixels == 1).all()


def test_a_folder_given_as_the_image_says_to_give_its_rasters(tmp_path):
    _strip(tmp_path / "scenes", ["a.tif"])
    res = run("info", tmp_path / "scenes")
    one_line_error(res, "is a folder", "*.tif")


# ---- tilecast info shows the class names of a categorical input ---------------------------------------------------

CATEGORIES = ("<CategoryNames><Category>water</Category><Category/><Category>forest &amp; scrub</Category>"
              "</CategoryNames>")


def _rat(fields, rows, attrs=""):
    """A thematic RAT: ``fields`` (name, GDAL type, GDAL usage), ``rows`` of cells."""
    defs = "".join(f'<FieldDefn index="{i}"><Name>{n}</Name><Type>{t}</Type><Usage>{u}</Usage></FieldDefn>'
                   for i, (n, t, u) in enumerate(fields))
    body = "".join(f'<Row index="{i}">' + "".join(f"<F>{c}</F>" for c in row) + "</Row>" for i, row in enumerate(rows))
    return f'<GDALRasterAttributeTable tableType="thematic"{attrs}>{defs}{body}</GDALRasterAttributeTable>'


RATS = {
    # GDAL's own: a MinMax value column and a Name column
    "gdal": (_rat([("Value", 0, 5), ("Count", 0, 1), ("Class_Name", 2, 2)], [(1, 100, "urban"), (3, 100, "crops")]),
             {1: "urban", 3: "crops"}),
    # ArcGIS's: every column generic; the value column is called Value, the names are the text column
    "arcgis": (_rat([("OID", 0, 0), ("Value", 0, 0), ("Count", 1, 0), ("Class_Name", 2, 0)],
                    [(0, 2, 10.0, "urban"), (1, 7, 5.0, "crops")]), {2: "urban", 7: "crops"}),
    # Min and Max columns: a class is one value; a range names no single value
    "minmax": (_rat([("Lo", 0, 3), ("Hi", 0, 4), ("Name", 2, 2)], [(1, 1, "urban"), (2, 5, "range"), (3, 3, "crops")]),
               {1: "urban", 3: "crops"}),
    # linear bins: no value column, row i is value Row0Min + i * BinSize
    "bins": (_rat([("Name", 2, 2)], [("urban",), ("",), ("crops",)], ' Row0Min="1" BinSize="1"'),
             {1: "urban", 3: "crops"}),
}


def _categorical(tmp_path, band_xml: list[str], name: str = "classes.tif") -> str:
    """A GeoTIFF whose category names / RATs GDAL itself writes (copied from a VRT that declares them), so the test
    does not depend on how tilecast would write them."""
    data = (np.arange(2 * 20 * 20).reshape(2, 20, 20) % 4).astype("uint8")[: len(band_xml)]
    base = write_raster(tmp_path / "base.tif", data)
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}">{xml}<SimpleSource><SourceFilename relativeToVRT="1">base.tif'
        f"</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource></VRTRasterBand>"
        for b, xml in enumerate(band_xml, start=1))
    vrt = tmp_path / "classes.vrt"
    vrt.write_text(f'<VRTDataset rasterXSize="20" rasterYSize="20">{bands}</VRTDataset>')
    out = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the VRT has no geotransform; the copy is only for its categories
        rasterio.shutil.copy(str(vrt), str(out), driver="GTiff")
    with rasterio.open(out, "r+") as ds, rasterio.open(base) as b:  # georeferenced as the base
        ds.crs, ds.transform = b.crs, b.transform
    return str(out)


def _info_classes(path) -> dict[int, dict[int, str]]:
    res = run("info", path, "--json")
    assert res.exit_code == 0, res.output
    out: dict[int, dict[int, str]] = {}
    for row in json.loads(res.stdout).get("classes", []):
        out.setdefault(row["band"], {})[row["value"]] = row["name"]
    return out


def test_info_shows_gdal_category_names(tmp_path):
    """Symptom: a land-cover input's class names (GDAL category names, in the .aux.xml GDAL writes) were nowhere in
    ``tilecast info``: only band, name, dtype, nodata."""
    path = _categorical(tmp_path, [CATEGORIES, ""])
    assert os.path.exists(path + ".aux.xml")  # GDAL wrote them where GDAL and QGIS read them
    assert _info_classes(path) == {1: {0: "water", 2: "forest & scrub"}}  # empty entries name nothing; band 2: none
    table = run("info", path).stdout
    assert "classes:" in table and "forest & scrub" in table


@pytest.mark.parametrize("style", list(RATS))
def test_info_shows_the_names_of_a_raster_attribute_table(tmp_path, style):
    xml, expected = RATS[style]
    assert _info_classes(_categorical(tmp_path, ["", xml])) == {2: expected}


def test_info_shows_no_classes_for_a_raster_without_them(tmp_path, raster):
    path = raster(np.zeros((1, 20, 20), "uint8"))
    res = run("info", path, "--json")
    assert res.exit_code == 0 and "classes" not in json.loads(res.stdout)


def test_info_shows_the_classes_of_a_tilecast_class_map_negative_values_included(tmp_path, raster):
    """tilecast's own class maps: the band's class_names tag holds every class (GDAL category names cannot name
    negative values)."""
    path = raster(np.zeros((1, 20, 20), "int16"), tags=None)
    with rasterio.open(path, "r+") as ds:
        ds.update_tags(1, class_names=json.dumps({"-1": "cloud", "2": "water"}))
    assert _info_classes(path) == {1: {-1: "cloud", 2: "water"}}


# ---- what a Dask run that fails part-way leaves next to its output ------------------------------------------------

PARTIAL_STATE = [".out.tif.partial.lock", ".out.tif.partial.tmp.tif", ".out.tif.partial.tmp.tif.ovr",
                 ".out.tif.resume.json"]


def _doubling(fail_below_row: int | None):
    """2 x the input, whose pixels are their own row numbers; with ``fail_below_row``, the tiles below that row raise
    a plain exception (a Python model crashing: not a tilecast error, so the run keeps its partial output)."""
    import tilecast

    def fn(x):
        if fail_below_row is not None and x.max() >= fail_below_row:
            raise RuntimeError("the model crashed")
        return x * 2.0

    return tilecast.Model.from_callable(fn, layout="NCHW", input_tile_size=256, output_bands={"v": "float32"})


def _fail_part_way(tmp_path):
    """A 2048 x 2048 Dask run in 512-px chunks (so the first overview level is streamed into the .ovr) whose bottom
    chunks fail; returns the input."""
    import tilecast

    scene = write_raster(tmp_path / "in.tif", coord_image(2048, 2048, 1))
    with pytest.raises(RuntimeError, match="the model crashed"):
        _doubling(1536).predict_image(scene).to_geotiff(tmp_path / "out.tif", engine=tilecast.Dask(workers=1),
                                                          chunk_size=512, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == PARTIAL_STATE
    return scene


def _check_output(tmp_path):
    with rasterio.open(tmp_path / "out.tif") as ds:
        rows = np.arange(2048, dtype="float32")[:, None] * 2.0
        np.testing.assert_array_equal(ds.read(1), np.broadcast_to(rows, (2048, 2048)))
        assert ds.overviews(1) == [2, 4]


@pytest.mark.dask
def test_a_dask_run_that_fails_part_way_keeps_its_partial_state_until_the_next_run(tmp_path):
    """The behaviour docs/dask.md describes: the partial file, its streamed first overview level (.ovr), the manifest
    and the lock stay for --resume; the next Dask run without --resume removes them and starts over."""
    import tilecast

    scene = _fail_part_way(tmp_path)
    _doubling(None).predict_image(scene).to_geotiff(tmp_path / "out.tif", engine=tilecast.Dask(workers=1),
                                                    chunk_size=512, progress=False)
    _check_output(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.dask
def test_a_local_run_into_the_output_of_a_failed_dask_run_leaves_no_partial_state(tmp_path):
    """Symptom: after a Dask run failed part-way, a local run into the same output (no --resume, no --overwrite:
    there was no output yet) succeeded but left the Dask run's partial file, .ovr, manifest and lock behind, hidden
    files as large as the uncompressed output that no later run would remove or resume."""
    scene = _fail_part_way(tmp_path)
    _doubling(None).predict_image(scene).to_geotiff(tmp_path / "out.tif", progress=False)
    _check_output(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- predict -o in a format predict does not write ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.png", "out.JPG", "out.zarr", "out.nc", "out.vrt", "out.csv"])
def test_an_output_named_for_another_format_is_refused(tmp_path, raster, name):
    """Symptom: ``-o out.png`` (or out.zarr, out.nc) wrote a GeoTIFF under that name, exit 0: a file that is not
    what its name says, which image viewers, xarray or netCDF tools then fail to open."""
    from onnx_models import mean_conv

    scene = raster(np.ones((1, 20, 20), "float32"))
    out = tmp_path / "outs"
    out.mkdir()
    res = run("predict", scene, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "-o", out / name, "-q")
    line = one_line_error(res, name.rsplit(".", 1)[1].lower(), ".tif", code=2)
    assert ("to_zarr" in line) == name.endswith(".zarr")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["OUT.TIF", "out.tiff", "landcover"])
def test_geotiff_names_still_write_a_geotiff(tmp_path, raster, name):
    from onnx_models import mean_conv

    scene = raster(np.ones((1, 20, 20), "float32"))
    res = run("predict", scene, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "-o", tmp_path / name, "-q")
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / name) as ds:
        assert ds.driver == "GTiff" and ds.shape == (20, 20)


# ---- --resampling is checked even when nothing is warped ------------------------------------------------------------


def test_a_misspelt_resampling_is_refused_even_when_the_input_is_on_the_model_grid(tmp_path, raster):
    """Symptom: --resampling cubicx --fix-input-proj --crs EPSG:32633 over an input already in EPSG:32633 (so not
    warped) ran and exited 0; the same typo with another CRS was an error."""
    from onnx_models import mean_conv

    scene = raster(np.ones((1, 20, 20), "float32"))
    out = tmp_path / "o.tif"
    args = ["predict", scene, "-m", mean_conv(tmp_path / "m.onnx"), "--tile", "16", "--fix-input-proj", "--crs",
            "EPSG:32633", "-o", out, "-q"]
    one_line_error(run(*args, "--resampling", "cubicx"), "cubicx", "bilinear", code=2)
    assert not out.exists()
    assert run(*args, "--resampling", "cubic").exit_code == 0


# ---- SIGHUP (a closed terminal or SSH session) unwinds the run like SIGTERM ----------------------------------------


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_aborts_the_run_and_leaves_no_temporary_file(tmp_path):
    """Symptom: closing the terminal (or losing the SSH session) of ``tilecast predict`` ended it by SIGHUP's
    default action, leaving its temporary GeoTIFF and .ovr (as large as the output) behind until a later run into
    the same output; it now unwinds as SIGTERM does, exit 129."""
    from onnx_models import mean_conv

    scene = write_raster(tmp_path / "scene.tif", np.random.default_rng(1).random((1, 2000, 2000)).astype("float32"))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "tilecast.cli", "predict", scene, "-m", mean_conv(tmp_path / "m.onnx"), "--tile",
           "32", "-o", str(out / "p.tif")]
    # SIGHUP must reach the child even when the suite itself runs under nohup (which ignores it)
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)) as proc:
        try:
            line = proc.stderr.readline()  # the first progress line: the run is under way
            assert "tiles" in line, line + proc.stderr.read()
            proc.send_signal(signal.SIGHUP)
            err = proc.stderr.read()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode in (128 + signal.SIGHUP, -signal.SIGHUP), err  # 129, or ended by the signal itself
    assert "Traceback" not in err and "Aborted!" in err
    assert sorted(p.name for p in out.iterdir()) == []


def test_info_of_a_glob_says_it_describes_one_raster(tmp_path):
    """Symptom: ``tilecast info 'scenes/*.tif'`` said "input raster not found: scenes/*.tif" of a folder full of
    rasters (the same pattern predict mosaics)."""
    _strip(tmp_path / "scenes", ["a.tif", "b.TIF"])
    line = one_line_error(run("info", str(tmp_path / "scenes" / "*.tif")), "one raster", "2 file(s)")
    assert "a.tif" in line and "not found" not in line


def test_a_glob_among_several_images_is_expanded_in_place(tmp_path):
    """Symptom: ``tilecast predict 'scenes/*.tif' extra.tif`` said "input raster not found: scenes/*.tif": a glob
    was expanded only when it was the one IMAGE."""
    _strip(tmp_path / "scenes", ["a.tif", "b.TIF"])
    _strip(tmp_path / "more", ["c.tif"], first=2)  # the third strip
    src = open_source([str(tmp_path / "scenes" / "*.tif"), str(tmp_path / "more" / "c.tif")])
    assert [m.files[0].rsplit(os.sep, 1)[1] for m in src.members] == ["a.tif", "b.TIF", "c.tif"]
    pixels, _ = src.read(Window(0, 0, 60, 20))
    np.testing.assert_array_equal(pixels[0, 0], np.repeat(np.array([1.0, 2.0, 3.0], "float32"), 20))
    assert open_source([str(tmp_path / "scenes" / "a*.tif")]).path.endswith("a.tif")  # one match: one raster


# ---- --header 'Name: value', as curl takes it ---------------------------------------------------------------------


@pytest.mark.server
def test_a_curl_style_header_reaches_the_endpoint(tmp_path, raster):
    """Symptom: ``--header 'Authorization: Bearer s3cret'`` (curl's spelling) sent the value with its leading space,
    which HTTP refuses: six attempts, then an error that quoted the token."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # the model metadata: not found, which ends the run once the header has arrived
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v2/models/m"
        res = run("predict", raster(np.ones((1, 20, 20), "float32")), "--endpoint", url, "--header",
                  "Authorization: Bearer s3cret", "--tile", "16", "-o", tmp_path / "o.tif", "-q")
    finally:
        server.shutdown()
        server.server_close()
    assert seen and seen[0] == "Bearer s3cret", (seen, res.output)
    assert "s3cret" not in res.output


@pytest.mark.parametrize("value", [" Bearer x", "Bearer x ", "\tx"])
def test_a_header_value_with_surrounding_spaces_is_refused_from_python_naming_the_header(value):
    """HTTP refuses a header value that starts or ends with a space or tab: sent as it is, every request failed
    (retried) and httpx's error quoted the value. The Python API refuses it up front, naming the header only."""
    from tilecast.errors import SpecError
    from tilecast.remote.transport import check_headers

    with pytest.raises(SpecError, match=r"'X-Key'.*space") as info:
        check_headers({"X-Key": value}, None)
    assert value.strip() not in str(info.value)
    check_headers({"X-Key": value.strip()}, None)


def test_polygonize_names_classes_from_gdal_category_names(tmp_path):
    """Symptom: polygonizing a land-cover raster whose classes GDAL names (category names in its .aux.xml) wrote
    class_name "0", "2": only tilecast's own class_names tag was read."""
    pyogrio = pytest.importorskip("pyogrio")
    from tilecast.vectors import polygonize_raster

    path = _categorical(tmp_path, [CATEGORIES])
    out = pyogrio.read_dataframe(polygonize_raster(path, tmp_path / "p.gpkg"))
    names = dict(zip(out["class_id"], out["class_name"], strict=True))
    assert names[0] == "water" and names[2] == "forest & scrub"


def test_the_viewer_legend_names_classes_from_gdal_category_names(tmp_path):
    """``tilecast view`` of a finished class map took only tilecast's class_names tag for its legend."""
    pytest.importorskip("rio_tiler")
    from tilecast.view.tiles import raster_style

    style = raster_style(_categorical(tmp_path, [CATEGORIES]))
    assert style.classes == {0: "water", 2: "forest & scrub"}
