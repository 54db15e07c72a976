"""uvicorn's httptools protocol with the connection limits it lacks.

uvicorn arms its keep-alive timer only after a response, so a socket that connects and sends nothing, or sends its
headers a byte at a time, stays open forever; httptools accepts headers of any size and number; and uvicorn's own
``limit_concurrency`` counts idle sockets too, so 1,100 of them made every request (health included) a 503. This
subclass adds, without parsing anything itself (httptools still parses):

- a header deadline from the connection (or from a request's first byte) to the end of its headers;
- a cap on the request line plus headers, and on the number of header fields (431, then the connection closes);
- a cap on open connections: past it, a new connection closes the oldest one that has no request in progress (an
  idle or slow-header socket), so a flood of idle sockets cannot lock real clients out; when every connection is
  busy, requests get 503 with ``Retry-After`` while health routes still answer;
- a cap per client address: over it, the same 503; past twice the cap, new sockets are closed at once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from .limits import ServerLimits
from .status import RETRY_AFTER_S

__all__ = ["GuardedProtocol", "guarded_protocol", "overload_app"]


LATE_S = 0.5
"""A timer that fires this much after its time was delayed by a stalled loop, not by the client."""


class HeadTooLarge(Exception):
    """Raised inside an httptools callback; httptools stops parsing and the connection gets 431."""


def overload_app(app: Any, health: frozenset[str], why: str) -> Any:
    """``app`` for health checks (GET or HEAD on a health route); 503 with ``Retry-After`` and ``Connection: close``
    for everything else, predictions POSTed to a health path included (Vertex AI's two routes may be one path)."""
    body = json.dumps({"error": why}).encode()
    headers = [(b"content-type", b"application/json"), (b"retry-after", str(RETRY_AFTER_S).encode()),
               (b"connection", b"close"), (b"content-length", str(len(body)).encode())]

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or (scope["path"] in health and scope["method"] in ("GET", "HEAD")):
            return await app(scope, receive, send)
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return guarded


def guarded_protocol(limits: ServerLimits, health: Iterable[str]) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` enforcing ``limits``; ``health``: paths that always answer.
    Each call makes a class with its own count of connections per client."""
    return type("GuardedProtocol", (GuardedProtocol,), {"limits": limits, "health_paths": frozenset(health),
                                                        "peers": Counter(), "idle": {}, "evicted": {}})


class GuardedProtocol(HttpToolsProtocol):
    """See the module; :func:`guarded_protocol` binds ``limits``, ``health_paths`` and ``peers``."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    health_paths: ClassVar[frozenset[str]] = frozenset()
    peers: ClassVar[Counter[str]] = Counter()
    idle: ClassVar[dict[GuardedProtocol, None]] = {}
    """Connections waiting for a request's headers, oldest first (a dict keeps insertion order)."""
    evicted: ClassVar[dict[GuardedProtocol, None]] = {}
    """Connections closed to make room, until their close completes (they still count in ``connections``)."""
    peer: str | None = None
    head_timer: asyncio.TimerHandle | None = None
    reading_head, head_bytes, head_fields, raw_head, refusal, message_done = True, 0, 0, 0, None, False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.peer = self.client[0] if self.client else ""
        self.peers[self.peer] += 1
        mine = self.peers[self.peer]
        if mine > 2 * self.limits.max_connections_per_client:
            transport.close()
            return
        if mine > self.limits.max_connections_per_client:
            self.app = overload_app(self.app, self.health_paths, f"too many connections from {self.peer} "
                                    f"(over {self.limits.max_connections_per_client}); retry after a pause")
        elif len(self.connections) - len(self.evicted) > self.limits.max_connections and not self.evict_idle():
            self.app = overload_app(self.app, self.health_paths, f"the server has {self.limits.max_connections} "
                                    "connections busy; retry after a pause")
        self.idle[self] = None
        self.arm_head_timer()

    def evict_idle(self) -> bool:
        """Close the oldest connection without a request in progress; False when there is none."""
        for other in self.idle:
            if other is not self and not other.transport.is_closing():
                other.transport.close()
                self.evicted[other] = None
                del self.idle[other]
                return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.idle.pop(self, None)
        self.evicted.pop(self, None)
        if self.peer is not None:
            self.peers[self.peer] -= 1
            if self.peers[self.peer] <= 0:
                del self.peers[self.peer]
            self.peer = None
        self.disarm_head_timer()

    def arm_head_timer(self) -> None:
        self.disarm_head_timer()
        self.head_timer = self.loop.call_later(self.limits.header_timeout_s, self.head_timeout)

    def disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def late(self, timer: asyncio.TimerHandle | None, again: Any) -> asyncio.TimerHandle | None:
        """When ``timer`` fired late because the event loop was stalled (a long decode holding the GIL), the socket
        may hold data the loop has not read yet: ``again`` is re-armed briefly (the new handle) instead of closing."""
        if timer is None or self.loop.time() - timer.when() <= LATE_S:
            return None
        return self.loop.call_later(LATE_S, again)

    def head_timeout(self) -> None:
        self.head_timer = self.late(self.head_timer, self.head_timeout)
        if self.head_timer is not None:
            return
        if self.reading_head and not self.transport.is_closing():
            self.transport.close()

    def timeout_keep_alive_handler(self) -> None:
        self.timeout_keep_alive_task = self.late(self.timeout_keep_alive_task, self.timeout_keep_alive_handler)
        if self.timeout_keep_alive_task is None:
            super().timeout_keep_alive_handler()

    def data_received(self, data: bytes) -> None:
        if self.reading_head:
            self.raw_head += len(data)
        super().data_received(data)
        if self.reading_head and self.raw_head > self.limits.max_header_bytes + 4096:
            self.refuse(431, f"the request line and headers are over {self.limits.max_header_bytes:,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.reading_head, self.head_bytes, self.head_fields, self.message_done = True, 0, 0, False
        if self.head_timer is None:
            self.arm_head_timer()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self.count_head(len(url), 0)

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self.count_head(len(name) + len(value) + 4, 1)

    def count_head(self, nbytes: int, fields: int) -> None:
        self.head_bytes += nbytes
        self.head_fields += fields
        if self.head_bytes > self.limits.max_header_bytes:
            self.refusal = f"the request line and headers are over {self.limits.max_header_bytes:,} bytes"
        elif self.head_fields > self.limits.max_headers:
            self.refusal = f"the request has over {self.limits.max_headers} header fields"
        if self.refusal:
            raise HeadTooLarge(self.refusal)

    def on_headers_complete(self) -> None:
        self.reading_head, self.raw_head = False, 0
        self.idle.pop(self, None)
        self.disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.message_done and not self.transport.is_closing():
            self.idle[self] = None  # idle only once the request's body is in too (an early answer leaves it coming)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.message_done = True
        if self.cycle is not None and self.cycle.response_complete and not self.transport.is_closing():
            self.idle[self] = None

    def send_400_response(self, msg: str) -> None:
        if self.refusal:  # httptools reports our HeadTooLarge as a parser error
            self.refuse(431, self.refusal)
        else:
            super().send_400_response(msg)

    def refuse(self, status: int, msg: str) -> None:
        if self.transport.is_closing():
            return
        text = msg.encode()
        self.transport.write(b"".join([STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
                                       b"content-length: %d\r\nconnection: close\r\n\r\n" % len(text), text]))
        self.transport.close()
