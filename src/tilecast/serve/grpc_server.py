"""TF Serving's ``PredictionService/Predict`` on a second port (grpc.aio, in the same event loop as HTTP).

Requests share the HTTP side's limits: the message size (RESOURCE_EXHAUSTED), the memory budget (UNAVAILABLE, a
code clients retry), declared shapes bounded by the body limit; bytes that are not a PredictRequest are
INVALID_ARGUMENT, as is every other bad input (:mod:`.status`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from .._extras import require
from ..errors import InputError, TilecastError
from ..payloads import grpc as codec
from ..payloads.protos import GetModelMetadataRequest, PredictRequest
from .app import ServerConfig, host_port
from .metrics import Metrics
from .models import ServedModel
from .status import GRPC_CODES, HTTPError, status_of, token_status

__all__ = ["PredictionService", "start_grpc"]

log = logging.getLogger("tilecast.serve")

INT32_MAX = (1 << 31) - 1
"""gRPC's channel options are 32-bit: the largest message it can receive (whatever --max-body-bytes says), the
longest idle time in ms (whatever --keep-alive-timeout says)."""


class Garbled:
    """What the deserializer hands on for bytes that are not the expected message, so the handler answers
    INVALID_ARGUMENT instead of gRPC's UNKNOWN/INTERNAL."""

    def __init__(self, kind: str, error: Exception) -> None:
        self.message = f"the request is not a serialized {kind}: {str(error)[:200]}"


def parse_with(cls: Any) -> Any:
    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # protobuf's DecodeError (and RecursionError on absurd nesting)
            return Garbled(cls.DESCRIPTOR.name, exc)

    return parse


def _shapes(m: ServedModel) -> dict[str, tuple[int, ...]]:
    return {t.name: tuple(t.shape[1:]) for t in m.signature.inputs  # type: ignore[misc]
            if t.shape is not None and None not in t.shape[1:]}


class PredictionService:
    """The two RPCs, over the same models, config and metrics as the HTTP app."""

    def __init__(self, grpc: Any, models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics) -> None:
        self.grpc, self.models, self.config, self.metrics = grpc, models, config, metrics

    async def abort(self, context: Any, status: int, message: str) -> None:
        await context.abort(self.grpc.StatusCode[GRPC_CODES.get(status, "INTERNAL")], message)

    def check(self, request: Any, context: Any) -> ServedModel:
        """Auth, a well-formed message and a known model; :class:`HTTPError` otherwise."""
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        denied = token_status(header, self.config.token)
        if denied:
            raise HTTPError(denied, "a bearer token is required" if denied == 401 else "the bearer token is not valid")
        if isinstance(request, Garbled):
            raise HTTPError(400, request.message)
        name = request.model_spec.name
        if name not in self.models:
            raise HTTPError(404, f"unknown model {name!r}; this server hosts {sorted(self.models)}")
        return self.models[name]

    async def run(self, m: ServedModel, request: Any) -> tuple[Any, int]:
        m.check_signature(request.model_spec.signature_name)
        with self.config.budget.reserve(3 * request.ByteSize(), "the request") as r:
            budget = self.config.decode_budget(r)
            arrays, fmt = codec.decode_request(request, _shapes(m), budget)
            if not arrays:
                raise InputError("the request has no inputs")
            out = await m.infer(arrays, list(request.output_filter) or None, ordered=False)
            r.grow(sum(v.nbytes for v in out.values()), "the answer", force=True)
            return codec.encode_response(fmt, out, m.name), len(next(iter(arrays.values())))

    async def predict(self, request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        name = "" if isinstance(request, Garbled) else request.model_spec.name
        status, n = 500, 0
        ticket = self.metrics.enter()
        try:
            resp, n = await self.run(self.check(request, context), request)
            status = 200
            return resp
        except asyncio.CancelledError:  # the server stopping past its grace (or a second Ctrl-C): the client sees
            status = 503  # UNAVAILABLE, and the log and metrics say so, as HTTP's 503 in that case
            raise
        except Exception as exc:
            status = status_of(exc)
            if status == 500 and not isinstance(exc, TilecastError):
                log.exception("internal error")
            await self.abort(context, status, str(exc))
        finally:
            self.metrics.leave(ticket)
            self.record(name, status, n, time.perf_counter() - t0)

    def record(self, name: str, status: int, n: int, elapsed: float) -> None:
        known = name if name in self.models else "unknown"
        self.metrics.requests.labels(known, "grpc", str(status)).inc()
        if status == 200:
            self.metrics.latency.labels(known, "grpc").observe(elapsed)
        log.info("request", extra={"fields": {"method": "Predict", "path": "grpc", "status": status,
                                              "ms": round(elapsed * 1000, 2), "model": name, "protocol": "grpc",
                                              "instances": n or None}})

    async def get_metadata(self, request: Any, context: Any) -> Any:
        try:
            m = self.check(request, context)
        except HTTPError as exc:
            await self.abort(context, exc.status, str(exc))
        return codec.metadata_response(m.name, m.version, m.signature)

    def handler(self) -> Any:
        grpc = self.grpc

        def unary(fn: Any, cls: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=parse_with(cls),
                                                       response_serializer=lambda m: m.SerializeToString())

        return grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
            "GetModelMetadata": unary(self.get_metadata, GetModelMetadataRequest),
            "Predict": unary(self.predict, PredictRequest),
        })


async def start_grpc(models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics, host: str,
                     port: int) -> tuple[Any, int]:
    """Start the gRPC server on ``host:port``; it stops with the HTTP app's lifespan. Returns it and the port it
    listens on (the one the system picked for port 0)."""
    grpc = require("grpc", "server")
    from grpc import aio

    limits = config.limits
    server = aio.server(options=[
        ("grpc.max_receive_message_length", min(limits.max_body_bytes, INT32_MAX)),
        ("grpc.max_send_message_length", 1 << 30),
        ("grpc.max_metadata_size", limits.max_header_bytes),
        ("grpc.max_concurrent_streams", 128),
        ("grpc.max_connection_idle_ms", int(min(max(limits.keep_alive_s, 60.0) * 1000, INT32_MAX))),
        ("grpc.http2.max_pings_without_data", 2),
    ])
    server.add_generic_rpc_handlers((PredictionService(grpc, models, config, metrics).handler(),))
    bound = server.add_insecure_port(host_port(host, port))
    if not bound:
        raise OSError(f"cannot bind the gRPC port {host_port(host, port)}")
    await server.start()
    return server, bound
