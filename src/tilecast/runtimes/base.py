"""The runtime contract: named arrays in, named arrays out, plus a signature.

A runtime knows nothing about rasters. ONNX Runtime is the default; PyTorch, TensorFlow, HTTP endpoints and plain
Python callables implement the same two members, so the engine never changes when a new one arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import TileSizeError

__all__ = ["Runtime", "Signature", "TensorSpec", "rejected_batch"]


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
    """Runs one batch. Implementations must be safe to call from one thread at a time."""

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
