"""Round 10 of the command-line review: items earlier reviews noticed and left alone (inherited ignored signals,
upper-case raster suffixes in a folder of inputs, category names of a categorical input), and what was met on the
way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.windows import Window

from conftest import write_raster
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


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_inherited_as_ignored_does_not_interrupt_the_run(tmp_path, name):
    """Symptom: ``nohup tilecast predict ...`` (or a background job of a shell without job control) was still ended by
    the SIGINT / SIGTERM the parent had asked to ignore: the CLI replaced SIG_IGN with its own handler."""
    script = tmp_path / "ignored.py"
    script.write_text(IGNORED)
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    res = subprocess.run([sys.executable, str(script), name], env=env, capture_output=True, text=True, timeout=60,
                         preexec_fn=_ignore(signal.SIGINT, signal.SIGTERM))
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


def _strip(folder, names):
    """Side-by-side 1-band rasters, 20 x 20 px of 10 m, the k-th filled with k + 1, in the given file names."""
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(names):
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
