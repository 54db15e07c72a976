"""Run a server: uvicorn for HTTP, optionally gRPC beside it, JSON logs, graceful shutdown.

On SIGINT/SIGTERM both protocols stop taking new requests at once and let in-flight ones finish, within the one
``graceful_s`` (``--graceful-timeout``), side by side; then the batchers stop and the runtimes are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .._extras import require
from ..errors import SpecError
from ..runtimes.base import Runtime, streams_of
from .app import ServerConfig, create_app, health_paths, host_port
from .limits import ServerLimits
from .metrics import Metrics
from .models import Batcher, ServedModel

__all__ = ["DEFAULT_PORT", "GrpcStop", "build", "configure_logging", "listen_address", "serve"]

log = logging.getLogger("tilecast.serve")

DEFAULT_PORT = 8500
"""The HTTP port without ``--port`` or ``$AIP_HTTP_PORT``."""


def listen_address(host: str | None = None, port: int | None = None) -> tuple[str, int]:
    """Where to listen: ``host`` and ``port`` when given; else, in a Vertex AI custom container (``$AIP_HTTP_PORT``
    set), 0.0.0.0 on that port, as Vertex requires (it probes and sends requests there, from outside the container);
    else 127.0.0.1 (local clients only) on :data:`DEFAULT_PORT`."""
    aip = os.environ.get("AIP_HTTP_PORT", "").strip()
    if port is None and aip:
        if not re.fullmatch(r"[0-9]{1,5}", aip) or int(aip) > 65535:
            raise SpecError(f"$AIP_HTTP_PORT is {aip!r}, not a port number (0-65535); Vertex AI sets it to the "
                            "container's first port: fix or unset it, or pass --port")
        port = int(aip)
    if host is None:
        host = "0.0.0.0" if aip else "127.0.0.1"
    return host, DEFAULT_PORT if port is None else port


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


class GrpcStop:
    """The gRPC server's stop, begun once: at the shutdown signal, beside the HTTP drain and with the same grace
    (``serve``), or when the app's lifespan ends (``build`` under another server), whichever comes first."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s, self.server, self.task, self.forced = grace_s, None, None, None
        self.loop: asyncio.AbstractEventLoop | None = None

    def started(self, server: Any) -> None:
        self.server, self.loop = server, asyncio.get_running_loop()

    def begin(self) -> None:
        """New calls are refused from now on; calls in flight have ``grace_s`` to finish, then are cancelled."""
        if self.server is not None and self.task is None:
            self.task = asyncio.ensure_future(self.server.stop(grace=self.grace_s))

    def force(self) -> None:
        """From a signal handler (a second Ctrl-C): cancel the calls in flight now, whatever the grace left."""
        if self.server is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(self._cancel_calls)

    def _cancel_calls(self) -> None:
        self.forced = asyncio.ensure_future(self.server.stop(grace=None))  # type: ignore[union-attr]

    async def finish(self, forced: bool = False) -> None:
        if self.server is None:
            return
        if forced:  # a second Ctrl-C: cancel the calls in flight now
            await self.server.stop(grace=None)
        self.begin()
        await self.task


def build(runtimes: Mapping[str, Runtime], *, token: str | None = None, max_body_bytes: int | None = None,
          max_batch: int = 32, batch_timeout_ms: float = 5.0, host: str = "127.0.0.1",
          grpc_port: int | None = None, bands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]] | None = None,
          limits: ServerLimits | None = None, graceful_s: float = 30.0) -> Any:
    """The ASGI app hosting ``runtimes`` (name -> runtime); batchers, gRPC and runtimes live with its lifespan.

    ``bands``: per model, its card's band order and common names (:func:`~tilecast.serve.models.card_bands`).
    ``limits``: every bound the server enforces (:class:`~tilecast.serve.limits.ServerLimits`); ``max_body_bytes``
    overrides its body limit. ``graceful_s``: how long gRPC calls in flight may take to finish once the server
    stops (``app.state.grpc_stop``, a :class:`GrpcStop`)."""
    metrics = Metrics()
    config = ServerConfig(token, max_body_bytes, limits)
    models: dict[str, ServedModel] = {}
    for name, rt in runtimes.items():
        order, common = (bands or {}).get(name, ((), {}))
        m = ServedModel(name, rt, platform=type(rt).__name__, bands=tuple(order), common_names=dict(common))
        m.batcher = Batcher(m.call, max_batch, batch_timeout_ms / 1000,
                            observe=lambda n, name=name: metrics.batch.labels(name).observe(n),
                            arriving=lambda: metrics.arriving, streams=streams_of(rt))
        models[name] = m

    grpc_stop = GrpcStop(graceful_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        if grpc_port is not None:
            from .grpc_server import start_grpc

            server, bound = await start_grpc(models, config, metrics, host, grpc_port)
            grpc_stop.started(server)
            log.info("listening", extra={"fields": {"grpc": host_port(host, bound)}})
        forced = False
        try:
            yield
        except asyncio.CancelledError:  # a forced exit (a second Ctrl-C) cancels the lifespan: close, no traceback
            log.info("forced exit: stopping without waiting for requests in flight")
            forced = True
        finally:
            await grpc_stop.finish(forced)
            for m in models.values():
                if m.batcher is not None:
                    await m.batcher.close()
                m.runtime.close()
            log.info("stopped")

    app = create_app(models, config, metrics, lifespan=lifespan)
    app.state.grpc_stop = grpc_stop
    return app


def serve(runtimes: Mapping[str, Runtime], *, host: str | None = None, port: int | None = None,
          grpc_port: int | None = None, token: str | None = None, max_batch: int = 32, batch_timeout_ms: float = 5.0,
          graceful_s: float = 30.0, log_level: str = "info",
          bands: Mapping[str, tuple[Sequence[str], Mapping[str, str]]] | None = None,
          limits: ServerLimits | None = None, **deprecated: int) -> None:
    """Serve until interrupted. ``host``/``port``: by default 127.0.0.1:8500, or Vertex AI's (0.0.0.0 on
    ``$AIP_HTTP_PORT``, see :func:`listen_address`). ``limits``: body size, memory budget,
    connections, timeouts and header caps (:class:`~tilecast.serve.limits.ServerLimits`); ``max_body_bytes`` and
    ``max_connections`` as keywords are deprecated spellings of two of them."""
    uvicorn = require("uvicorn", "server")
    from .protocol import guarded_protocol

    limits = _with_deprecated(limits or ServerLimits(), deprecated)
    host, port = listen_address(host, port)
    configure_logging(log_level)
    app = build(runtimes, token=token, max_batch=max_batch, batch_timeout_ms=batch_timeout_ms, host=host,
                grpc_port=grpc_port, bands=bands, limits=limits, graceful_s=graceful_s)
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="on",
                            http=guarded_protocol(limits, health_paths()), ws="none",
                            timeout_keep_alive=limits.keep_alive_s, timeout_graceful_shutdown=graceful_s,
                            log_level=log_level)
    if host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening beyond this machine without a token; anyone who can reach the port can use the "
                    "models. Pass --token-env to require a bearer token")
    log.info("listening", extra={"fields": {"http": f"http://{host_port(host, port)}", "models": sorted(runtimes),
                                            "streams": {k: streams_of(rt) for k, rt in runtimes.items()},
                                            "auth": bool(token), "max_batch": max_batch,
                                            "batch_timeout_ms": batch_timeout_ms, **dataclasses.asdict(limits)}})
    stopping = app.state.grpc_stop

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: Any = None) -> None:
            stopping.begin()  # gRPC drains beside HTTP from the signal on, so the whole stop takes one grace
            await super().shutdown(sockets)

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            if self.force_exit:  # a second Ctrl-C stops gRPC's drain too, not only HTTP's
                stopping.force()

    Server(config).run()


def _with_deprecated(limits: ServerLimits, deprecated: Mapping[str, int]) -> ServerLimits:
    unknown = set(deprecated) - {"max_body_bytes", "max_connections"}
    if unknown:
        raise TypeError(f"serve() got unexpected keyword arguments {sorted(unknown)}")
    if deprecated:
        warnings.warn(f"serve({', '.join(deprecated)}=...) is deprecated; pass limits=ServerLimits(...)",
                      DeprecationWarning, stacklevel=3)
    return dataclasses.replace(limits, **deprecated)
