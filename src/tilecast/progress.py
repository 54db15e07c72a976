"""Progress on stderr: tiles done, raster megapixels per second, time left. Library code takes a callback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Protocol, TextIO, runtime_checkable

from .sinks.base import finishing_of

__all__ = ["Notes", "Progress", "ProgressCallback", "note"]

ProgressCallback = Callable[[int, int, int], None]
"""Called with ``(tiles_done, tiles_total, pixels_done)``."""


class Progress:
    """A throttled one-line progress report; call it as a :data:`ProgressCallback`."""

    def __init__(self, label: str = "predict", stream: TextIO | None = None, every: float = 0.5) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.every = every
        self.start = time.perf_counter()
        self.last = 0.0
        self.tty = getattr(self.stream, "isatty", lambda: False)()

    def __call__(self, done: int, total: int, pixels: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last < self.every:
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = pixels / elapsed / 1e6
        eta = (total - done) * elapsed / done if done else float("nan")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta == eta else "--:--:--"
        pct = 100.0 * done / total if total else 100.0
        line = f"{self.label}: {done}/{total} tiles ({pct:5.1f}%) {rate:7.2f} Mpx/s ETA {eta_text}"
        end = "\n" if done >= total or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()

    def note(self, text: str) -> None:
        """A one-off line, e.g. what happens after the last tile (which can take a while on big rasters)."""
        self.stream.write(f"{self.label}: {text}\n")
        self.stream.flush()


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
