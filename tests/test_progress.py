"""Progress: the ETA comes from measured speed only (a fake clock), and ``progress=None`` shows a bar only when someone
watches (a terminal or a notebook)."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest

import tilecast
from conftest import write_raster
from tilecast import progress as prog
from tilecast.progress import Eta, Progress, TqdmProgress, resolve


class FakeClock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_no_eta_until_tiles_were_timed_then_the_measured_one():
    clock = FakeClock()
    eta = Eta(clock)
    clock.t += 10  # start-up: loading and warming up the model take 10 s, then one tile per second
    eta.update(1, 0)
    assert eta.seconds_left(100) is None  # the old estimate here was 99 tiles x 10 s = 990 s
    clock.t += 1
    eta.update(2, 0)
    assert eta.seconds_left(100) is None  # one interval, one tile: not a speed yet
    clock.t += 1
    eta.update(3, 0)
    assert eta.seconds_left(100) is None  # two tiles timed, fewer than three
    clock.t += 1
    eta.update(4, 0)
    assert eta.seconds_left(100) == pytest.approx(96.0)  # 96 tiles left at the measured 1 tile/s
    clock.t += 4
    eta.update(8, 0)  # a batch of four arrives at once: the average since the first report holds
    assert eta.seconds_left(100) == pytest.approx(92.0)
    eta.update(100, 0)
    assert eta.seconds_left(100) == 0.0


def test_batches_need_two_intervals():
    clock = FakeClock()
    eta = Eta(clock)
    eta.update(8, 0)
    clock.t += 2
    eta.update(16, 0)  # eight tiles, but one interval: could be the tail of start-up
    assert eta.seconds_left(64) is None
    clock.t += 2
    eta.update(24, 0)
    assert eta.seconds_left(64) == pytest.approx(40 * 4 / 16)


def test_progress_lines_show_the_eta_once_measured():
    clock, stream = FakeClock(), io.StringIO()
    report = Progress("predict", stream, every=0, clock=clock)
    clock.t += 30  # a slow start
    for done in range(1, 11):
        report(done, 10, done * 1_000_000)
        clock.t += 1
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10 and all(line.startswith("predict: ") for line in lines)
    assert [line.endswith("ETA --:--:--") for line in lines[:3]] == [True, True, True]
    assert lines[3].endswith("ETA 00:00:06")  # 6 tiles left at 1 tile/s (not 6 x 33 s)
    assert lines[-1].endswith("ETA 00:00:00") and "10/10 tiles (100.0%)" in lines[-1]


def test_tqdm_bar_reports_the_same_eta():
    pytest.importorskip("tqdm")
    clock, stream = FakeClock(), io.StringIO()
    bar = TqdmProgress("predict", stream, clock=clock)
    clock.t += 30
    for done in range(1, 6):
        bar(done, 10, done * 500_000)
        clock.t += 2
        if done == 1:
            assert "ETA --:--:--" in bar.bar.postfix
    assert "ETA 00:00:10" in bar.bar.postfix  # 5 left at one tile per 2 s
    bar(10, 10, 5_000_000)
    text = stream.getvalue()
    assert "10/10 tiles" in text and "ETA 00:00:00" in text


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_default_follows_the_terminal_and_notebooks(monkeypatch):
    monkeypatch.setattr(prog, "in_notebook", lambda: False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: nobody watches
    assert resolve(None) is None
    assert isinstance(resolve(True), Progress)  # asked for: plain lines in the log
    assert resolve(False) is None
    mine = lambda done, total, pixels: None  # noqa: E731
    assert resolve(mine) is mine
    monkeypatch.setattr(sys, "stderr", Tty())
    assert isinstance(resolve(None), TqdmProgress if _has_tqdm() else Progress)
    assert resolve(False) is None
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setattr(prog, "in_notebook", lambda: True)
    assert isinstance(resolve(None), TqdmProgress if _has_tqdm() else Progress)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # tqdm missing: the stderr lines instead
    assert isinstance(resolve(None), Progress)


def test_not_a_notebook_here():
    assert prog.in_notebook() is False


def test_a_prediction_drives_the_bar(tmp_path):
    pytest.importorskip("tqdm")
    stream = io.StringIO()
    bar = TqdmProgress("predict", stream)
    model = tilecast.Model.from_callable(lambda x: x * 2, input_tile_size=8, layout="NCHW", batch_size=2,
                                         output_bands=["a:float32", "b:float32"])
    pixels = np.arange(2 * 20 * 30, dtype=np.float32).reshape(2, 20, 30)
    out = model.predict_image(write_raster(tmp_path / "in.tif", pixels)).to_numpy(progress=bar)
    np.testing.assert_array_equal(out, pixels * 2)
    assert "12/12 tiles" in stream.getvalue()  # 3 x 4 tiles of 8 x 8


def _has_tqdm() -> bool:
    import importlib.util

    return importlib.util.find_spec("tqdm") is not None


def test_the_unit_counted_is_named():
    """polygonize counts rows, not tiles: the line says which."""
    out = io.StringIO()
    Progress("polygonize", stream=out, unit="rows")(3, 3, 30)
    assert "3/3 rows" in out.getvalue() and "tiles" not in out.getvalue()
