"""Progress: tiles done, raster megapixels per second, time left. Library code takes a callback.

:func:`resolve` turns a ``progress=`` argument into a callback: ``None`` (the default) shows a bar when someone is
watching (a terminal, or a Jupyter notebook), through ``tqdm.auto`` so notebooks get a real bar; ``True`` always
shows one; ``False`` none. Without tqdm, or when stderr is a log file, :class:`Progress` writes plain lines.

The time left comes from measured speed only: the first tiles include start-up (loading, warming up the model,
filling the pipeline), so no ETA is shown until a few tiles have been timed after the first report (:class:`Eta`).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO, runtime_checkable

from .sinks.base import finishing_of

__all__ = ["Eta", "Notes", "Progress", "ProgressCallback", "TqdmProgress", "in_notebook", "note", "resolve"]

ProgressCallback = Callable[[int, int, int], None]
"""Called with ``(tiles_done, tiles_total, pixels_done)``."""

Clock = Callable[[], float]


class Eta:
    """Speed and time left, measured from the first report on (what came before it is start-up).

    ``min_tiles`` tiles over at least ``min_updates`` reports must have been timed before :meth:`seconds_left`
    answers: a batch arrives at once, so one interval is not a speed yet.
    """

    def __init__(self, clock: Clock = time.perf_counter, min_tiles: int = 3, min_updates: int = 2) -> None:
        self.clock = clock
        self.min_tiles, self.min_updates = min_tiles, min_updates
        self.start = clock()
        self.first: tuple[float, int, int] | None = None
        self.updates = 0
        self.last: tuple[float, int, int] = (self.start, 0, 0)

    def update(self, done: int, pixels: int) -> None:
        now = self.clock()
        if self.first is None:
            self.first = (now, done, pixels)
        else:
            self.updates += 1
        self.last = (now, done, pixels)

    def seconds_left(self, total: int) -> float | None:
        """None until enough tiles were timed; 0 once every tile is done."""
        now, done, _ = self.last
        if done >= total:
            return 0.0
        if self.first is None:
            return None
        t0, d0, _ = self.first
        timed = done - d0
        if timed < self.min_tiles or self.updates < self.min_updates or now <= t0:
            return None
        return (total - done) * (now - t0) / timed

    def megapixels_per_second(self) -> float:
        """Raster throughput over the whole run so far (start-up included: it is what the user waits for)."""
        now, _, pixels = self.last
        return pixels / max(now - self.start, 1e-9) / 1e6


def _clock_text(seconds: float | None) -> str:
    return "--:--:--" if seconds is None else time.strftime("%H:%M:%S", time.gmtime(seconds))


class Progress:
    """A throttled one-line progress report on ``stream`` (stderr); call it as a :data:`ProgressCallback`."""

    def __init__(self, label: str = "predict", stream: TextIO | None = None, every: float = 0.5,
                 clock: Clock = time.perf_counter, unit: str = "tiles") -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.every = every
        self.clock = clock
        self.eta = Eta(clock)
        self.last = float("-inf")
        self.tty = _isatty(self.stream)

    def __call__(self, done: int, total: int, pixels: int) -> None:
        self.eta.update(done, pixels)
        now = self.clock()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        pct = 100.0 * done / total if total else 100.0
        line = (f"{self.label}: {done}/{total} {self.unit} ({pct:5.1f}%) {self.eta.megapixels_per_second():7.2f} Mpx/s "
                f"ETA {_clock_text(self.eta.seconds_left(total))}")
        end = "\n" if done >= total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()

    def note(self, text: str) -> None:
        """A one-off line, e.g. what happens after the last tile (which can take a while on big rasters)."""
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


class TqdmProgress:
    """A ``tqdm.auto`` bar (a widget in notebooks); the same speed and ETA as :class:`Progress`. The bar starts at
    the first report, so start-up is not counted as speed."""

    def __init__(self, label: str = "predict", stream: TextIO | None = None, clock: Clock = time.perf_counter,
                 unit: str = "tiles") -> None:
        self.label, self.unit = label, unit
        self.stream = stream
        self.eta = Eta(clock)
        self.bar: Any = None

    def __call__(self, done: int, total: int, pixels: int) -> None:
        self.eta.update(done, pixels)
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=0, desc=self.label, unit=self.unit.rstrip("s"),
                            file=self.stream or sys.stderr, dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} " + self.unit
                            + " [{elapsed}{postfix}]")
        left = self.eta.seconds_left(total)
        self.bar.set_postfix_str(f"{self.eta.megapixels_per_second():.2f} Mpx/s, ETA {_clock_text(left)}",
                                 refresh=False)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def note(self, text: str) -> None:
        from tqdm.auto import tqdm

        tqdm.write(f"{self.label}: {text}", file=self.stream or sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@runtime_checkable
class Notes(Protocol):
    """A progress callback that also shows one-off lines (as :class:`Progress` does)."""

    def note(self, text: str) -> None: ...


def note(progress: object, sink: object) -> None:
    """Tell a progress callback that takes notes what the sink does after the last tile, if the sink says
    (:func:`~tilecast.sinks.base.finishing_of`)."""
    text = finishing_of(sink)
    if text and isinstance(progress, Notes):
        progress.note(text)


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (where stderr is no terminal, but a bar is still seen)."""
    if "ipykernel" not in sys.modules or "IPython" not in sys.modules:
        return False
    shell = sys.modules["IPython"].get_ipython()
    return shell is not None and type(shell).__module__.startswith(("ipykernel", "google.colab"))


def resolve(progress: bool | ProgressCallback | None, label: str = "predict") -> ProgressCallback | None:
    """The callback for a ``progress=`` argument: a callable is used as it is, ``False`` means none, ``True`` a
    bar, and ``None`` (the default) a bar only when attached to a terminal or a notebook.

    The bar is tqdm's (``tqdm.auto``) in a notebook or a terminal when tqdm is installed; otherwise, and when
    stderr goes to a file, plain :class:`Progress` lines.
    """
    if callable(progress):
        return progress
    notebook = in_notebook()
    terminal = _isatty(sys.stderr)
    if progress is None:
        progress = notebook or terminal
    if not progress:
        return None
    if (notebook or terminal) and importlib.util.find_spec("tqdm") is not None:
        return TqdmProgress(label)
    return Progress(label)
