"""The runtime contract: named arrays in, named arrays out, plus a signature.

A runtime knows nothing about rasters. ONNX Runtime is the default; PyTorch, TensorFlow, HTTP endpoints and plain
Python callables implement the same two members, so the engine never changes when a new one arrives.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import TileSizeError

__all__ = ["Runtime", "Signature", "TensorSpec", "rejected_batch", "run_split", "streams_of"]


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
    """Runs one batch. Implementations must be safe to call from one thread at a time, or from ``streams``
    threads at once when they have that optional attribute (see :func:`streams_of`). An optional true
    ``releases_inputs`` says that nothing of the batch is kept or returned once ``run`` returns, so runners may
    stack the next batch into the same arrays."""

    signature: Signature

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]: ...

    def close(self) -> None: ...


def rejected_batch(framework: str, batch: Mapping[str, np.ndarray], exc: BaseException) -> TileSizeError:
    """The error for a framework that refused a batch: what was sent, what it said, and the flags that fix it."""
    shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
    return TileSizeError(
        f"the {framework} model rejected the batch ({shapes}): {type(exc).__name__}: {str(exc)[:300]}. "
        "Match --tile/--overlap, the layout and the dtype to the model's input"
    )


def streams_of(runtime: object) -> int:
    """How many ``run`` calls a runner may keep in flight on ``runtime`` at once: its ``streams`` attribute, else 1.

    Runners that pipeline batches (the local runner, chunk tasks, the server) keep this many calls going, so a
    runtime that splits its threads into streams (:class:`~tilecast.runtimes.onnx.OnnxRuntime`) still uses them all.
    """
    return max(1, int(getattr(runtime, "streams", 1) or 1))


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
