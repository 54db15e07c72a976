"""Where a plan runs: one :data:`Engine` value, ``Local(...)`` or ``Dask(...)``, for predictions and every export.

A prediction's :class:`~tilecast.job.Job` and each export's plan say *what* to compute; the engine says *where*.
:func:`resolve_engine` turns what a caller passes (``None``, ``"local"``, ``"dask"``, an engine, and the keywords
of earlier releases such as ``workers=``) into one engine value, so no function parses Dask options itself.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from ..errors import SpecError

if TYPE_CHECKING:
    from ..resources import Resources

__all__ = ["DASK_OPTIONS", "Dask", "Engine", "Local", "pop_engine_options", "resolve_engine"]


@dataclass(frozen=True)
class Local:
    """Run on this machine, with threads. ``threads``: reading threads of a prediction (default: from the CPUs);
    exports read on one thread. ``resources``: the resource policy of a prediction's stages (reading and writer
    threads, batch reuse, assembly memory; default :meth:`Resources.detect() <tilecast.resources.Resources.detect>`,
    which ``TILECAST_CPUS`` / ``--cpus`` also size)."""

    threads: int | None = None
    resources: Resources | None = None

    def __post_init__(self) -> None:
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise SpecError(f"Local(threads={self.threads!r}): threads must be a whole number >= 1, or None for the "
                            "default")


@dataclass(frozen=True)
class Dask:
    """Run as Dask tasks: on ``client``, on the cluster at ``scheduler``, on the current client, or on a new
    LocalCluster of ``workers`` processes (in that order). The outputs are the local engine's.

    ``performance_report``: write Dask's HTML performance report there. ``chunk_rows`` (image exports: patch rows
    per task) and ``samples_per_task`` (sample and patch exports) size the tasks (default: two per worker thread);
    ``in_flight`` caps the prediction chunks submitted at once (default: four per worker thread).
    """

    client: Any = None
    scheduler: str | None = None
    workers: int | None = None
    performance_report: str | os.PathLike | None = None
    chunk_rows: int | None = None
    samples_per_task: int | None = None
    in_flight: int | None = None

    def __post_init__(self) -> None:
        sizes = {"workers": self.workers, "chunk_rows": self.chunk_rows, "samples_per_task": self.samples_per_task,
                 "in_flight": self.in_flight}
        for name, value in sizes.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SpecError(f"Dask({name}={value!r}): {name} must be a positive integer, or None for the default")
        if self.client is not None and self.scheduler is not None:
            raise SpecError("Dask(client=..., scheduler=...): pass a client or a scheduler address, not both")


Engine: TypeAlias = Local | Dask

DASK_OPTIONS = tuple(f.name for f in dataclasses.fields(Dask))
"""The keywords that earlier releases took beside ``engine="dask"``; they still work, with a DeprecationWarning."""

_NAMES = {"local": Local, "dask": Dask}


def resolve_engine(engine: Engine | str | None = None, default: Engine | str | None = None,
                   legacy: Mapping[str, Any] | None = None) -> Engine:
    """The engine to run on: ``engine`` (an engine, ``"local"`` or ``"dask"``), else ``default``, else ``Local()``.

    ``legacy``: Dask keywords passed the old way (``workers=2`` beside ``engine="dask"``); those that are not None
    are folded into the :class:`Dask` engine with a DeprecationWarning."""
    chosen = _one(engine if engine is not None else default)
    given = {k: v for k, v in (legacy or {}).items() if v is not None}
    unknown = sorted(set(given) - set(DASK_OPTIONS))
    if unknown:
        raise SpecError(f"unknown engine options {unknown}; tilecast.Dask takes {list(DASK_OPTIONS)}")
    if not given:
        return chosen
    spelled = ", ".join(f"{k}={v!r}" for k, v in given.items())
    if isinstance(chosen, Local):
        raise SpecError(f"{', '.join(k + '=' for k in given)} only apply with engine='dask'; "
                        f"pass engine=tilecast.Dask({spelled}) or leave them out")
    warnings.warn(f"passing {', '.join(k + '=' for k in given)} beside the engine is deprecated; "
                  f"pass engine=tilecast.Dask({spelled}) instead", DeprecationWarning, stacklevel=3)
    return dataclasses.replace(chosen, **given)


def _one(engine: Any) -> Engine:
    if engine is None:
        return Local()
    if isinstance(engine, (Local, Dask)):
        return engine
    if isinstance(engine, str) and engine.lower() in _NAMES:
        return _NAMES[engine.lower()]()
    raise SpecError(f"unknown engine {engine!r}; pass engine=tilecast.Local() (threads on this machine) or "
                    "engine=tilecast.Dask(...) (or the strings 'local' / 'dask')")


def pop_engine_options(options: MutableMapping[str, Any]) -> dict[str, Any]:
    """Take the legacy Dask keywords out of a function's ``**options``, for :func:`resolve_engine`."""
    return {k: options.pop(k) for k in DASK_OPTIONS if k in options}
