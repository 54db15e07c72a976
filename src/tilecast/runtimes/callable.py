"""A plain Python function as a model: handy for tests, analytic models and numpy pipelines."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import OutputShapeError
from .base import Signature, TensorSpec

__all__ = ["CallableRuntime"]


class CallableRuntime:
    """Wraps ``fn``. With one input, ``fn`` gets the array; with several, a dict of arrays.

    ``fn`` may return an array (one output) or a dict of arrays. Shapes and dtypes are whatever ``fn`` accepts, so
    the signature leaves them open unless given.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        inputs: Sequence[str | TensorSpec] = ("input",),
        outputs: Sequence[str | TensorSpec] = ("output",),
    ) -> None:
        self.fn = fn
        self.signature = Signature(
            tuple(t if isinstance(t, TensorSpec) else TensorSpec(t, None, None) for t in inputs),
            tuple(t if isinstance(t, TensorSpec) else TensorSpec(t, None, None) for t in outputs),
        )

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self.signature.input_names
        result = self.fn(batch[names[0]]) if len(names) == 1 else self.fn(dict(batch))
        if isinstance(result, Mapping):
            return {k: np.asarray(v) for k, v in result.items()}
        outs = self.signature.output_names
        if len(outs) != 1:
            raise OutputShapeError(f"the function returned one array but {len(outs)} outputs were declared: {outs}")
        return {outs[0]: np.asarray(result)}

    def close(self) -> None:
        pass
