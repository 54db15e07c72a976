"""The server's limits, and the memory budget that bounds what requests in flight may take in all.

A request is charged, before it is decoded, an upper bound of the memory decoding it takes (:func:`json_cost` for
JSON bodies: about 3x the body for tensor strings, 7x for typical numbers, 27x at worst for a body of ``0,0,0``);
the arrays its shapes declare are bounded by the body limit (:class:`~tilecast.payloads.checks.DecodeBudget`). When
the charges in flight would pass the budget, the request gets 503 with ``Retry-After`` instead of swelling the
process, and once the server is idle again the freed memory is handed back to the system.
"""

from __future__ import annotations

import ctypes
import sys
import threading
from dataclasses import dataclass

from .status import HTTPError, Overloaded

__all__ = ["SMALL_REQUEST_BYTES", "MemoryBudget", "Reservation", "ServerLimits", "json_cost", "release_memory"]

SMALL_REQUEST_BYTES = 256 << 10
"""A request charged no more than this is never refused for memory: small and malformed requests always get their
real answer (connections bound how many there can be)."""


@dataclass(frozen=True)
class ServerLimits:
    """Every bound the server enforces; the defaults suit one host serving a few clients."""

    max_body_bytes: int = 32 << 20
    """Largest request body (413; gRPC RESOURCE_EXHAUSTED); also what the tensors in one request may declare."""
    memory_bytes: int = 512 << 20
    """What requests in flight may take in all, by their charges; over it: 503 with Retry-After."""
    max_connections: int = 1024
    """Open connections; new ones beyond it get 503 with Retry-After (health still answers)."""
    max_connections_per_client: int = 256
    """Open connections from one client address; beyond it, the same 503 (twice as many: closed at once)."""
    header_timeout_s: float = 10.0
    """Time to send a request's line and headers, from the connection or its first byte; then the socket closes."""
    keep_alive_s: float = 5.0
    """How long an idle keep-alive connection stays open between requests."""
    body_timeout_s: float = 60.0
    """Time to send a request body (408)."""
    max_header_bytes: int = 64 << 10
    """Request line plus headers; more gets 431 and the connection is closed."""
    max_headers: int = 100
    """Header fields per request; more gets 431."""


def json_cost(body: bytes | memoryview) -> int:
    """An upper bound of the memory ``json.loads`` plus the conversion to arrays takes for ``body``: per value a
    float object, its list slot and a float64 (48 bytes), per list or object its container, and 3x the text."""
    data = bytes(body) if isinstance(body, memoryview) else body
    return 3 * len(data) + 48 * (data.count(b",") + 1) + 64 * data.count(b"[") + 240 * data.count(b"{")


class Reservation:
    """One request's charge on a :class:`MemoryBudget`; release it when the request is answered."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget, self.nbytes = budget, 0

    def grow(self, nbytes: int, what: str, force: bool = False) -> None:
        """Charge ``nbytes`` more; 413 when it could never fit, 503 when it does not fit now (unless ``force``)."""
        b = self.budget
        with b.lock:
            self._grow(b, nbytes, what, force)

    def _grow(self, b: MemoryBudget, nbytes: int, what: str, force: bool) -> None:
        total = self.nbytes + nbytes
        force = force or total <= SMALL_REQUEST_BYTES
        if not force and total > b.total:
            raise HTTPError(413, f"{what} needs about {total:,} bytes of memory to decode, more than this server's "
                                 f"budget for requests in flight ({b.total:,}); send fewer instances per request, "
                                 "or a binary format (V2_BINARY, SERIALIZED_TF_TENSORS)")
        if not force and b.used + nbytes > b.total:
            raise Overloaded(f"the server is busy: requests in flight hold {b.used:,} of its {b.total:,} bytes of "
                             "memory budget; retry after a pause")
        b.used += nbytes
        b.peak = max(b.peak, b.used)
        self.nbytes = total

    def release(self) -> None:
        b = self.budget
        with b.lock:
            b.used -= self.nbytes
            b.freed += self.nbytes
            self.nbytes = 0
            trim = b.used == 0 and b.freed >= b.trim_after
            if trim:
                b.freed = 0
        if trim:
            release_memory()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class MemoryBudget:
    """Bytes that requests in flight may hold, charged by :class:`Reservation` (from the event loop and from the
    threads that decode requests)."""

    def __init__(self, total: int, trim_after: int = 64 << 20) -> None:
        self.total, self.trim_after = int(total), int(trim_after)
        self.used = self.peak = self.freed = 0
        self.lock = threading.Lock()

    def reserve(self, nbytes: int, what: str) -> Reservation:
        r = Reservation(self)
        r.grow(nbytes, what)
        return r


def release_memory() -> bool:
    """Hand freed heap memory back to the system (glibc's ``malloc_trim``); big JSON bodies leave many small
    blocks that otherwise stay with the process. False where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False
