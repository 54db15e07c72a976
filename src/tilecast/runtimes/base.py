"""The runtime contract: named arrays in, named arrays out, plus a signature.

A runtime knows nothing about rasters. ONNX Runtime is the default; PyTorch, TensorFlow, HTTP endpoints and plain
Python callables implement the same two members, so the engine never changes when a new one arrives. What a runtime
can do beyond that (concurrent calls, reusable inputs, embedded metadata, rebuilding itself on a worker) is declared,
with a default, on :class:`BaseRuntime`, never discovered by probing attributes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import TileSizeError

__all__ = [
    "BaseRuntime",
    "Concurrent",
    "Described",
    "FileBacked",
    "OneStream",
    "RebuildableRuntime",
    "ReleasesInputs",
    "Releasing",
    "Runtime",
    "RuntimeRecipe",
    "Signature",
    "TensorSpec",
    "metadata_of",
    "model_path",
    "one_stream_of",
    "recipe_of",
    "rejected_batch",
    "releases_inputs",
    "run_released",
    "run_split",
    "streams_of",
]


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor. ``None`` in ``shape`` is a dynamic dimension; ``shape`` None means unknown rank."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: np.dtype | None

    def describe(self) -> str:
        dims = "?" if self.shape is None else "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {dims} {self.dtype if self.dtype is not None else 'any'}"


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)


@runtime_checkable
class Runtime(Protocol):
    """The required part of the contract: a ``signature``, ``run`` and ``close``. Any object with these runs.

    Optional abilities are declared on :class:`BaseRuntime` with their defaults; an object that does not derive from
    it may still declare one by having the member (each ability is a small protocol, checked with ``isinstance``).
    """

    signature: Signature

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...

    def close(self) -> None: ...


RuntimeRecipe = tuple[Callable[..., Any], tuple[Any, ...], Mapping[str, Any]]
"""``(factory, args, kwargs)``: ``factory(*args, **kwargs)`` rebuilds a runtime in another process."""


@runtime_checkable
class Concurrent(Protocol):
    """Takes ``streams`` calls to ``run`` at once, from as many threads."""

    streams: int


@runtime_checkable
class ReleasesInputs(Protocol):
    """With a true ``releases_inputs`` nothing of a batch is kept or returned once ``run`` returns, so a runner may
    stack the next batch into the same arrays."""

    releases_inputs: bool


@runtime_checkable
class Described(Protocol):
    """Carries the model file's own metadata (e.g. an embedded model card under ``"mlm:item"``)."""

    metadata: Mapping[str, str]


@runtime_checkable
class FileBacked(Protocol):
    """Loaded from ``path`` (None: from bytes or memory); a resumed run checks that the file did not change."""

    path: str | None


@runtime_checkable
class RebuildableRuntime(Protocol):
    """Says how another process (a Dask worker) rebuilds it, instead of being pickled with every job."""

    def recipe(self) -> RuntimeRecipe | None: ...


@runtime_checkable
class OneStream(Protocol):
    """Can run the same model one call at a time on all its threads instead of several calls on a share each."""

    def one_stream(self) -> Runtime: ...


@runtime_checkable
class Releasing(Protocol):
    """Can run a call and then give back the memory it took (a probe at a size the run may not use)."""

    def run_released(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...


def run_released(runtime: Runtime, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
    """Run ``batch`` on ``runtime`` and hand back the memory the call needed (:class:`Releasing`); a plain ``run``
    for runtimes that cannot."""
    return runtime.run_released(batch) if isinstance(runtime, Releasing) else runtime.run(batch)


def one_stream_of(runtime: Runtime) -> Runtime:
    """``runtime`` with one call at a time on all its threads (:class:`OneStream`), or itself: for calls so large
    that one keeps every thread busy, where each extra stream only holds another call's activations."""
    return runtime.one_stream() if isinstance(runtime, OneStream) else runtime


class BaseRuntime:
    """A base class for runtimes that declares every optional ability with its default.

    Subclasses implement ``signature`` and ``run``, and override only the abilities they have. Runners and the
    server read the abilities through :func:`streams_of`, :func:`releases_inputs`, :func:`metadata_of`,
    :func:`model_path` and :func:`recipe_of`, which apply the same defaults to runtimes that do not derive from
    this class.
    """

    signature: Signature
    streams: int = 1
    """How many ``run`` calls may run at once, each on its own thread; one: calls come one at a time."""
    releases_inputs: bool = False
    """True when nothing of a batch is kept or returned once ``run`` returns (see :class:`ReleasesInputs`)."""
    metadata: Mapping[str, str] = MappingProxyType({})
    """The model file's own metadata."""
    path: str | None = None
    """The model file, when it was loaded from one."""

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        raise NotImplementedError(f"{type(self).__name__} must implement run()")

    def recipe(self) -> RuntimeRecipe | None:
        """How a worker process rebuilds this runtime; None: the runtime object itself is sent."""
        return None

    def close(self) -> None:
        """Release what the runtime holds (sessions, threads, connections)."""

    def one_stream(self) -> Runtime:
        """This model with one call at a time on all its threads (see :func:`one_stream_of`); itself by default."""
        return self  # type: ignore[return-value]

    def run_released(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """``run``, handing back the memory the call needed where the runtime keeps it (see :func:`run_released`)."""
        return self.run(batch)  # type: ignore[attr-defined]


def streams_of(runtime: object) -> int:
    """How many ``run`` calls a runner may keep in flight on ``runtime`` at once: its declared ``streams``, else 1.

    Runners that pipeline batches (the local runner, chunk tasks, the server) keep this many calls going, so a
    runtime that splits its threads into streams (:class:`~tilecast.runtimes.onnx.OnnxRuntime`) still uses them all.
    """
    return max(1, int(runtime.streams or 1)) if isinstance(runtime, Concurrent) else 1


def releases_inputs(runtime: object) -> bool:
    """Whether ``runtime`` declares that it keeps nothing of a batch once ``run`` returns (default False)."""
    return bool(runtime.releases_inputs) if isinstance(runtime, ReleasesInputs) else False


def metadata_of(runtime: object) -> Mapping[str, str]:
    """The model file's metadata that ``runtime`` declares; empty by default."""
    return (runtime.metadata or {}) if isinstance(runtime, Described) else {}


def model_path(runtime: object) -> str | None:
    """The file ``runtime`` was loaded from, if it declares one."""
    return runtime.path if isinstance(runtime, FileBacked) else None


def recipe_of(runtime: object) -> RuntimeRecipe | None:
    """How a worker rebuilds ``runtime`` (see :class:`RebuildableRuntime`); None: send the object itself."""
    return runtime.recipe() if isinstance(runtime, RebuildableRuntime) else None


def rejected_batch(framework: str, batch: Mapping[str, np.ndarray], exc: BaseException) -> TileSizeError:
    """The error for a framework that refused a batch: what was sent, what it said, and the flags that fix it."""
    shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
    return TileSizeError(
        f"the {framework} model rejected the batch ({shapes}): {type(exc).__name__}: {str(exc)[:300]}. "
        "Match --tile/--overlap, the layout and the dtype to the model's input"
    )


def run_split(runtime: Runtime, batch: Mapping[str, np.ndarray], executor: Executor | None) -> Mapping[str, np.ndarray]:
    """One batch as :func:`streams_of` concurrent calls over slices of its rows, joined again along the rows: for
    callers that hold one batch at a time (feature tables), so a runtime's streams all work on it.

    ``executor`` runs every slice but the first (which runs on the calling thread). Outputs that are not one row
    per input row cannot be joined; then the whole batch runs again as one call.
    """
    n = min((len(v) for v in batch.values()), default=0)
    k = min(streams_of(runtime), n)
    if executor is None or k < 2:
        return runtime.run(batch)
    bounds = np.linspace(0, n, k + 1).astype(int)
    parts = [{name: v[a:b] for name, v in batch.items()} for a, b in itertools.pairwise(bounds)]
    futures = [executor.submit(runtime.run, part) for part in parts[1:]]
    outs = [runtime.run(parts[0]), *(f.result() for f in futures)]
    if any(np.shape(out[name])[:1] != (b - a,) for out, (a, b) in zip(outs, itertools.pairwise(bounds), strict=True)
           for name in out):
        return runtime.run(batch)
    return {name: np.concatenate([np.asarray(out[name]) for out in outs]) for name in outs[0]}
