"""Prometheus metrics of one server: requests, latencies, batch sizes, requests in flight."""

from __future__ import annotations

from contextvars import ContextVar

from .._extras import require

__all__ = ["ARRIVING", "Metrics", "Ticket"]


class Metrics:
    def __init__(self) -> None:
        prom = require("prometheus_client", "server")
        self._prom = prom
        self.registry = prom.CollectorRegistry()
        self.requests = prom.Counter("tilecast_requests", "Requests answered.", ["model", "protocol", "code"],
                                     registry=self.registry)
        self.latency = prom.Histogram("tilecast_request_seconds", "Latency of successful predictions.",
                                      ["model", "protocol"], registry=self.registry,
                                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = prom.Histogram("tilecast_batch_instances", "Instances per model call (after dynamic batching).",
                                    ["model"], registry=self.registry,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.inflight = prom.Gauge("tilecast_requests_in_flight", "Requests being handled.", registry=self.registry)
        self.arriving = 0
        """Requests accepted whose inputs have not reached a batcher yet (one event loop: no lock needed)."""

    def enter(self) -> Ticket:
        self.inflight.inc()
        self.arriving += 1
        ticket = Ticket(self)
        ARRIVING.set(ticket)
        return ticket

    def leave(self, ticket: Ticket) -> None:
        ticket.arrive()
        self.inflight.dec()

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class Ticket:
    """Marks one request as arrived at its batcher, once."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics: Metrics | None = metrics

    def arrive(self) -> None:
        if self.metrics is not None:
            self.metrics.arriving -= 1
            self.metrics = None


ARRIVING: ContextVar[Ticket | None] = ContextVar("tilecast_arriving", default=None)
