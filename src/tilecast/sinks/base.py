"""The sink contract: ``open(profile)``, ``write(window, data)`` in row order, then ``close()`` or ``abort()``.

What a sink wants beyond that (blocks of whole rows, a note while it finishes) is declared, with a default, on
:class:`BaseSink`; sinks that take whole chunks in any order and resume implement :class:`ChunkSink`. Runners never
probe for attributes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
from rasterio.windows import Window

from ..sources.base import Grid
from ..spec import OutputBand

__all__ = [
    "BaseSink", "Checkpointed", "ChunkSink", "ChunkWriter", "Finishing", "OutputProfile", "RowBlocked", "Sink",
    "WritesFile", "block_rows_of", "finishing_of", "output_path_of",
]


@dataclass(frozen=True)
class OutputProfile:
    """Everything a sink needs to lay out the result before the first pixel arrives."""

    grid: Grid
    band_names: tuple[str, ...]
    dtype: np.dtype
    nodata: float | None
    bands: tuple[OutputBand, ...] = ()
    categorical: bool = False
    """Class maps use nearest/mode overviews; continuous values use average."""
    tags: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Sink(Protocol):
    """The required part of the contract. Optional abilities are declared on :class:`BaseSink` with their defaults;
    read them through :func:`block_rows_of` and :func:`finishing_of`, which apply the same defaults to sinks that do
    not derive from it."""

    def open(self, profile: OutputProfile) -> None: ...

    def write(self, window: Window, data: np.ndarray) -> None:
        """Take the finished rows in ``window``. ``data`` may be the runner's own buffer, reused once ``write``
        returns: copy what you keep."""
        ...

    def close(self) -> Any:
        """Finish and publish the output; returns what the caller gets back (a path, an array)."""
        ...

    def abort(self) -> None:
        """Leave nothing behind; also called after an ``open`` that failed partway, and more than once."""
        ...


@runtime_checkable
class RowBlocked(Protocol):
    """Wants blocks handed over in multiples of ``block_rows`` rows (except the last)."""

    block_rows: int


@runtime_checkable
class Finishing(Protocol):
    """Says what ``close`` does after the last tile (``finishing``), for the progress report."""

    finishing: str | None


class BaseSink:
    """A base class for sinks that declares every optional ability with its default: subclasses implement
    ``open``, ``write`` and ``close``, and override only the abilities they have."""

    block_rows: int = 1
    """Blocks are handed over in multiples of this many rows (except the last); one: any rows."""
    finishing: str | None = None
    """What :meth:`close` does after the last tile, when that takes a while (shown by the progress report)."""

    def open(self, profile: OutputProfile) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement open()")

    def write(self, window: Window, data: np.ndarray) -> None:
        raise NotImplementedError(f"{type(self).__name__} must implement write()")

    def close(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement close()")

    def abort(self) -> None:
        """Leave nothing behind."""


@runtime_checkable
class WritesFile(Protocol):
    """Publishes its result at ``path`` (a file or a folder): runners refuse a path that is one of the inputs."""

    path: os.PathLike | str


def output_path_of(sink: object) -> os.PathLike | str | None:
    """Where a sink publishes its result (:class:`WritesFile`); None for sinks that keep it in memory."""
    return sink.path if isinstance(sink, WritesFile) else None


def block_rows_of(sink: object) -> int:
    """The rows a sink's blocks come in multiples of (:class:`RowBlocked`); 1 by default."""
    return max(1, int(sink.block_rows or 1)) if isinstance(sink, RowBlocked) else 1


def finishing_of(sink: object) -> str | None:
    """What a sink does after the last tile (:class:`Finishing`); None by default."""
    return sink.finishing if isinstance(sink, Finishing) else None


class ChunkWriter(Protocol):
    """Writes whole chunks into a chunk sink's output; picklable, as it runs on workers."""

    def write(self, window: Window, data: np.ndarray) -> None: ...


@runtime_checkable
class ChunkSink(Protocol):
    """A sink that takes whole output chunks in any order, from any process, and can resume: runners check for it
    with ``isinstance(sink, ChunkSink)``."""

    def prepare(self, profile: OutputProfile, fingerprint: str, chunks: tuple[int, int], resume: bool) -> set[int]:
        """Create (or, with ``resume``, reopen) the partial output; returns the chunks already finished."""
        ...

    def writer(self) -> ChunkWriter | None:
        """What workers write with; None: send the pixels back to the client, which calls ``write``."""
        ...

    def write(self, window: Window, data: np.ndarray) -> None: ...

    def mark(self, indices: Iterable[int]) -> None:
        """Record finished chunks (their pixels are already written)."""
        ...

    def close(self) -> Any: ...

    def abort(self, keep: bool = False) -> None:
        """Remove the partial output, or with ``keep`` leave it and the manifest for ``resume``."""
        ...


@runtime_checkable
class Checkpointed(Protocol):
    """A chunk sink that keeps its record of finished chunks in memory between writes to disk: ``checkpoint``
    writes it now (before the long ``close``), so a run stopped then resumes without redoing any chunk."""

    def checkpoint(self) -> None: ...
