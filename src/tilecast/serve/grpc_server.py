"""TF Serving's ``PredictionService/Predict`` on a second port (grpc.aio, in the same event loop as HTTP)."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

from .._extras import require
from ..errors import TilecastError
from ..payloads import grpc as codec
from ..payloads.protos import GetModelMetadataRequest, PredictRequest
from .app import ServerConfig, _status
from .metrics import Metrics
from .models import ServedModel

__all__ = ["start_grpc"]

log = logging.getLogger("tilecast.serve")


async def start_grpc(models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics, host: str,
                     port: int) -> Any:
    grpc = require("grpc", "server")
    from grpc import aio

    def shapes(m: ServedModel) -> dict[str, tuple[int, ...]]:
        out = {}
        for t in m.signature.inputs:
            if t.shape is not None and None not in t.shape[1:]:
                out[t.name] = tuple(t.shape[1:])  # type: ignore[arg-type]
        return out

    async def predict(request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        name = request.model_spec.name
        status, n = 500, 0
        ticket = metrics.enter()
        try:
            if config.token:
                meta = dict(context.invocation_metadata() or ())
                header = meta.get("authorization", "")
                if not header:
                    status = 401
                    await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
                scheme, _, given = header.partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), config.token.encode()):
                    status = 403
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid")
            if name not in models:
                status = 404
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    f"unknown model {name!r}; this server hosts {sorted(models)}")
            m = models[name]
            try:
                arrays, fmt = codec.decode_request(request, shapes(m))
                n = len(next(iter(arrays.values()))) if arrays else 0
                out = await m.infer(arrays, list(request.output_filter) or None, ordered=False)
                resp = codec.encode_response(fmt, out, m.name)
                status = 200
                return resp
            except Exception as exc:
                status = _status(exc)
                if status == 500 and not isinstance(exc, TilecastError):
                    log.exception("internal error")
                code = grpc.StatusCode.INVALID_ARGUMENT if status == 400 else grpc.StatusCode.INTERNAL
                await context.abort(code, str(exc))
        finally:
            metrics.leave(ticket)
            elapsed = time.perf_counter() - t0
            known = name if name in models else "unknown"
            metrics.requests.labels(known, "grpc", str(status)).inc()
            if status == 200:
                metrics.latency.labels(known, "grpc").observe(elapsed)
            log.info("request", extra={"fields": {"method": "Predict", "path": "grpc", "status": status,
                                                  "ms": round(elapsed * 1000, 2), "model": name,
                                                  "protocol": "grpc", "instances": n or None}})

    async def get_metadata(request: Any, context: Any) -> Any:
        if config.token:
            header = dict(context.invocation_metadata() or ()).get("authorization", "")
            scheme, _, given = header.partition(" ")
            if not header:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, "a bearer token is required")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), config.token.encode()):
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "the bearer token is not valid")
        name = request.model_spec.name
        if name not in models:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {name!r}; this server hosts {sorted(models)}")
        m = models[name]
        return codec.metadata_response(m.name, m.version, m.signature)

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
            get_metadata, request_deserializer=GetModelMetadataRequest.FromString,
            response_serializer=lambda m: m.SerializeToString()),
        "Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=PredictRequest.FromString,
            response_serializer=lambda m: m.SerializeToString()),
    })
    server = aio.server(options=[("grpc.max_receive_message_length", config.max_body_bytes),
                                 ("grpc.max_send_message_length", 1 << 30)])
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"cannot bind the gRPC port {host}:{port}")
    await server.start()
    return server
