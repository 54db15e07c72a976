"""Where a run's time goes: the model's share of the wall time, and both speeds (``tilecast predict -v``).

A :class:`RunStats` counts the wall time during which at least one model call runs (calls of several streams that
overlap count once), so ``pixels / model_seconds`` is the speed the model would reach alone on these tiles and
``pixels / wall_seconds`` the pipeline's. When the two are close the model is the limit; when the share is low,
reading, assembling or writing is. :class:`TimedRuntime` wraps a runtime to feed it, declaring the same abilities,
so a runner times its model calls without knowing it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import numpy as np

from .runtimes.base import (
    BaseRuntime,
    Runtime,
    RuntimeRecipe,
    metadata_of,
    model_path,
    recipe_of,
    releases_inputs,
    streams_of,
)

__all__ = ["RunStats", "TimedRuntime"]


class RunStats:
    """Wall time, model time (the union of the calls' intervals) and pixels of one run; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._since = 0.0
        self.model_seconds = 0.0
        """Seconds during which at least one model call ran."""
        self.calls = 0
        self.pixels = 0
        """Pixels of the region predicted (what both speeds are counted in)."""
        self.started: float | None = None
        self.stopped: float | None = None
        self.last_call_end: float | None = None
        """When the last model call ended (``perf_counter``): what follows it is the output's tail."""

    def start(self) -> None:
        self.started, self.stopped = time.perf_counter(), None

    def stop(self) -> None:
        self.stopped = time.perf_counter()

    @property
    def wall_seconds(self) -> float:
        if self.started is None:
            return 0.0
        return (self.stopped if self.stopped is not None else time.perf_counter()) - self.started

    def call_started(self) -> None:
        with self._lock:
            if self._active == 0:
                self._since = time.perf_counter()
            self._active += 1
            self.calls += 1

    def call_ended(self) -> None:
        with self._lock:
            self._active -= 1
            self.last_call_end = time.perf_counter()
            if self._active == 0:
                self.model_seconds += self.last_call_end - self._since

    @property
    def model_share(self) -> float:
        wall = self.wall_seconds
        return self.model_seconds / wall if wall > 0 else 0.0

    def model_mpx_s(self) -> float:
        return self.pixels / self.model_seconds / 1e6 if self.model_seconds > 0 else float("nan")

    def pipeline_mpx_s(self) -> float:
        wall = self.wall_seconds
        return self.pixels / wall / 1e6 if wall > 0 else float("nan")

    def summary(self) -> str:
        """The one-line profile: ``profile: model 87% of 12.1 s; model alone 3.60 Mpx/s; pipeline 3.13 Mpx/s``."""
        if not self.calls:
            return f"profile: {self.wall_seconds:.1f} s, {self.pipeline_mpx_s():.2f} Mpx/s (model time not measured)"
        limit = "the model is the limit" if self.model_share >= 0.8 else "I/O and assembly are the limit"
        return (f"profile: model {self.model_share:.0%} of {self.wall_seconds:.1f} s wall ({self.calls} calls); "
                f"model alone {self.model_mpx_s():.2f} Mpx/s; pipeline {self.pipeline_mpx_s():.2f} Mpx/s "
                f"({self.pixels / 1e6:.1f} Mpx; {limit})")


class TimedRuntime(BaseRuntime):
    """``runtime`` with every call timed into ``stats``; declares the wrapped runtime's abilities (streams, reusable
    inputs, metadata, file, recipe), so runners treat it as they would the runtime itself. Closing it leaves the
    wrapped runtime open (its owner closes it)."""

    def __init__(self, runtime: Runtime, stats: RunStats) -> None:
        self.runtime, self.stats = runtime, stats
        self.signature = runtime.signature
        self.streams = streams_of(runtime)
        self.releases_inputs = releases_inputs(runtime)
        self.metadata = metadata_of(runtime)
        self.path = model_path(runtime)

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        self.stats.call_started()
        try:
            return self.runtime.run(batch)
        finally:
            self.stats.call_ended()

    def recipe(self) -> RuntimeRecipe | None:
        return recipe_of(self.runtime)

    def __repr__(self) -> str:
        return f"TimedRuntime({self.runtime!r})"

