"""Run a server: uvicorn for HTTP, optionally gRPC beside it, JSON logs, graceful shutdown.

On SIGINT/SIGTERM uvicorn stops accepting connections and lets in-flight requests finish (up to
``graceful_s``); then the gRPC server drains, the batchers stop and the runtimes are closed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .._extras import require
from ..runtimes.base import Runtime, streams_of
from .app import ServerConfig, create_app
from .metrics import Metrics
from .models import Batcher, ServedModel

__all__ = ["build", "configure_logging", "serve"]

log = logging.getLogger("tilecast.serve")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(time.time(), 3), "level": record.levelname.lower(),
                                 "logger": record.name, "event": record.getMessage()}
        entry.update({k: v for k, v in getattr(record, "fields", {}).items() if v is not None})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("tilecast", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level.upper())
        lg.propagate = False


def build(runtimes: Mapping[str, Runtime], *, token: str | None = None, max_body_bytes: int = 64 << 20,
          max_batch: int = 32, batch_timeout_ms: float = 5.0, host: str = "127.0.0.1",
          grpc_port: int | None = None, bands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]] | None = None
          ) -> Any:
    """The ASGI app hosting ``runtimes`` (name -> runtime); batchers, gRPC and runtimes live with its lifespan.

    ``bands``: per model, its card's band order and common names (:func:`~tilecast.serve.models.card_bands`)."""
    metrics = Metrics()
    config = ServerConfig(token, max_body_bytes)
    models: dict[str, ServedModel] = {}
    for name, rt in runtimes.items():
        order, common = (bands or {}).get(name, ((), {}))
        m = ServedModel(name, rt, platform=type(rt).__name__, bands=tuple(order), common_names=dict(common))
        m.batcher = Batcher(m.call, max_batch, batch_timeout_ms / 1000,
                            observe=lambda n, name=name: metrics.batch.labels(name).observe(n),
                            arriving=lambda: metrics.arriving, streams=streams_of(rt))
        models[name] = m

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        grpc_server = None
        if grpc_port is not None:
            from .grpc_server import start_grpc

            grpc_server = await start_grpc(models, config, metrics, host, grpc_port)
            log.info("listening", extra={"fields": {"grpc": f"{host}:{grpc_port}"}})
        try:
            yield
        finally:
            if grpc_server is not None:
                await grpc_server.stop(grace=10)
            for m in models.values():
                if m.batcher is not None:
                    await m.batcher.close()
                m.runtime.close()
            log.info("stopped")

    return create_app(models, config, metrics, lifespan=lifespan)


def serve(runtimes: Mapping[str, Runtime], *, host: str = "127.0.0.1", port: int = 8500,
          grpc_port: int | None = None, token: str | None = None, max_body_bytes: int = 64 << 20,
          max_batch: int = 32, batch_timeout_ms: float = 5.0, max_connections: int = 1024,
          graceful_s: float = 30.0, log_level: str = "info",
          bands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]] | None = None) -> None:
    """Serve until interrupted. Binds 127.0.0.1 unless told otherwise."""
    uvicorn = require("uvicorn", "server")
    configure_logging(log_level)
    app = build(runtimes, token=token, max_body_bytes=max_body_bytes, max_batch=max_batch,
                batch_timeout_ms=batch_timeout_ms, host=host, grpc_port=grpc_port, bands=bands)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            limit_concurrency=max_connections, timeout_graceful_shutdown=graceful_s,
                            log_level=log_level)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening beyond this machine without a token; anyone who can reach the port can use the "
                    "models. Pass --token-env to require a bearer token")
    log.info("listening", extra={"fields": {"http": f"http://{host}:{port}", "models": sorted(runtimes),
                                            "auth": bool(token), "max_body_bytes": max_body_bytes,
                                            "max_batch": max_batch, "batch_timeout_ms": batch_timeout_ms}})
    uvicorn.Server(config).run()
