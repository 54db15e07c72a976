"""Split a batch into requests that fit ``max_payload_bytes``, budgeting the response with ``output_multiplier``."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping

import numpy as np

from ..errors import SpecError, TileSizeError

__all__ = ["Packer"]

Measure = Callable[[Mapping[str, np.ndarray], int, int], int]
TEXT_MARGIN = 1.1
"""Text formats' size varies with the values; leave this much room over the measured size."""


class Packer:
    """Decides how many instances go in each request.

    The per-instance and fixed sizes are measured by encoding one and two instances of the first batch of each
    shape (exact for binary formats); the plan is cached by shape, so later batches cost nothing.
    """

    def __init__(self, limit: int, multiplier: float | None, measure: Measure, fmt: str, text: bool) -> None:
        if limit <= 0:
            raise SpecError(f"max_payload_bytes must be positive, got {limit}")
        if multiplier is not None and multiplier < 1:
            raise SpecError(f"output_multiplier must be >= 1 (Earth Engine's rule), got {multiplier}")
        self.limit, self.multiplier, self.measure, self.fmt = limit, multiplier or 1.0, measure, fmt
        self.margin = TEXT_MARGIN if text else 1.0
        self._cache: dict[tuple, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def sizes(self, batch: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """(bytes per instance, fixed bytes per request), response budget included."""
        key = tuple((k, v.shape[1:], v.dtype.str) for k, v in batch.items())
        with self._lock:
            if key not in self._cache:
                n = len(next(iter(batch.values())))
                one = self.measure(batch, 0, 1)
                per = (self.measure(batch, 0, 2) - one) if n >= 2 else one
                fixed = max(one - per, 0)
                self._cache[key] = (per * self.margin * self.multiplier, fixed * self.multiplier)
            return self._cache[key]

    def per_request(self, batch: Mapping[str, np.ndarray]) -> int:
        per, fixed = self.sizes(batch)
        k = int((self.limit - fixed) // per) if per > 0 else 1 << 30
        if k < 1:
            raise self.too_big(batch, per, fixed)
        return k

    def slices(self, batch: Mapping[str, np.ndarray]) -> list[tuple[int, int]]:
        n = len(next(iter(batch.values())))
        if n == 0:
            return []
        k = self.per_request(batch)
        count = math.ceil(n / k)
        size = math.ceil(n / count)  # even requests, so none is a runt
        return [(a, min(a + size, n)) for a in range(0, n, size)]

    def too_big(self, batch: Mapping[str, np.ndarray], per: float, fixed: float) -> TileSizeError:
        biggest = max(batch.values(), key=lambda a: a[0].size if a.ndim > 1 else 0)
        dims = sorted(biggest.shape[1:], reverse=True)[:2]
        pixels = dims[0] * dims[1] if len(dims) == 2 else max(dims or [1])
        per_pixel = per / max(pixels, 1)
        side = int(math.sqrt(max(self.limit - fixed, 0) / per_pixel)) if per_pixel > 0 else 0
        budget = f" with output_multiplier {self.multiplier:g}" if self.multiplier != 1 else ""
        shapes = ", ".join(f"{k} {list(v.shape[1:])} {v.dtype}" for k, v in batch.items())
        return TileSizeError(
            f"one tile ({shapes}) needs about {int(per + fixed):,} bytes as {self.fmt}{budget}, over "
            f"max_payload_bytes={self.limit:,}. The largest square tile that fits is {side} x {side} pixels, "
            f"overlap included (input_tile_size + 2 * overlap <= {side}); use a smaller --tile, a more compact "
            "payload format, or raise --max-payload-bytes if the endpoint accepts more"
        )
