"""Retries with exponential backoff and full jitter, honouring ``Retry-After``.

Waits are :class:`threading.Event` waits, not ``time.sleep``: closing a transport, or :func:`interrupt_waits` (which
the command line calls on Ctrl-C and SIGTERM), ends every wait at once, so an interrupted run does not sit out a
two-minute ``Retry-After`` in a request thread that the interpreter joins before it exits.
"""

from __future__ import annotations

import random
import threading
import time
import weakref
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from ..errors import EndpointError

__all__ = ["RETRY_STATUS", "RetryPolicy", "interrupt_waits", "interruptible_event", "retry_after"]

_EVENTS: weakref.WeakSet[threading.Event] = weakref.WeakSet()
_EVENTS_LOCK = threading.Lock()


def interruptible_event() -> threading.Event:
    """An event that ends a transport's retry waits when set; :func:`interrupt_waits` sets them all."""
    event = threading.Event()
    with _EVENTS_LOCK:
        _EVENTS.add(event)
    return event


def interrupt_waits() -> None:
    """End every retry wait of every transport now (their requests fail with :class:`EndpointError`)."""
    with _EVENTS_LOCK:
        events = list(_EVENTS)
    for event in events:
        event.set()

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

    def sleep(self, attempt: int, retry_after_s: float | None = None, stop: threading.Event | None = None) -> None:
        """Wait before a retry; ``stop`` (see :func:`interruptible_event`) ends the wait with an error."""
        delay = self.delay(attempt, retry_after_s)
        if stop is None:
            time.sleep(delay)
        elif stop.wait(delay):
            raise EndpointError("the run was stopped while waiting to retry the endpoint; run it again when the "
                                "endpoint is ready")


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
