"""Prometheus metrics of one server: requests, latencies, batch sizes, requests in flight."""

from __future__ import annotations

from .._extras import require

__all__ = ["Metrics"]


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
        self.active = 0
        """The same count as a plain int, for the batchers (one event loop: no lock needed)."""

    def enter(self) -> None:
        self.active += 1
        self.inflight.inc()

    def leave(self) -> None:
        self.active -= 1
        self.inflight.dec()

    def render(self) -> tuple[bytes, str]:
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
