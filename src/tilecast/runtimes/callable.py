"""A plain Python function as a model: handy for tests, analytic models and numpy pipelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import OutputShapeError
from .base import BaseRuntime, Signature, TensorSpec

__all__ = ["CallableRuntime"]


class CallableRuntime(BaseRuntime):
    """Wraps ``fn``. With one input, ``fn`` gets the array; with several, a dict of arrays.

    ``fn`` may return an array (one output) or a dict of arrays. ``inputs=None`` accepts whatever the engine sends
    (the band names in Earth Engine's layout, or one stacked input), so shapes and dtypes stay open.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[str | TensorSpec] | None = None,
        outputs: Sequence[str | TensorSpec] = ("output",),
    ) -> None:
        self.fn = fn
        self.signature = Signature(
            tuple(t if isinstance(t, TensorSpec) else TensorSpec(t, None, None) for t in inputs or ()),
            tuple(t if isinstance(t, TensorSpec) else TensorSpec(t, None, None) for t in outputs),
        )

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self.fn(next(iter(batch.values()))) if len(batch) == 1 else self.fn(dict(batch))
        if isinstance(result, Mapping):
            return {k: np.asarray(v) for k, v in result.items()}
        outs = self.signature.output_names
        if len(outs) != 1:
            raise OutputShapeError(f"the function returned one array but {len(outs)} outputs were declared: {outs}")
        return {outs[0]: np.asarray(result)}

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"CallableRuntime({getattr(self.fn, '__name__', self.fn)!r})"
