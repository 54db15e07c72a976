"""Retries with exponential backoff and full jitter, honouring ``Retry-After``."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

__all__ = ["RETRY_STATUS", "RetryPolicy", "retry_after"]

RETRY_STATUS = frozenset({429, 502, 503, 504})
"""Statuses that mean "try again later" (overload, a gateway that lost its upstream)."""


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 5
    """Retries after the first attempt."""
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = 120.0
    """A ``Retry-After`` longer than this is shortened to it."""

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_retry_after)
        return random.uniform(0, min(self.cap, self.base * 2**attempt))

    def sleep(self, attempt: int, retry_after_s: float | None = None) -> None:
        time.sleep(self.delay(attempt, retry_after_s))


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return None
