"""The HTTP side: KServe v2, TF Serving REST, the Earth Engine / Vertex AI ``:predict`` convention, and /metrics.

Built on Starlette. Request bodies are read with a hard size limit (413), optional bearer-token auth guards every
route but health (401 without a token, 403 with a wrong one), and library errors map to status codes: bad input
400, unknown model 404, model failures 500. Every answer is logged as one JSON line.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import InputError, ModelError, OutputShapeError, SpecError, TilecastError
from ..payloads import rest, v2
from ..payloads.protos import enum_of, type_name
from ..runtimes.base import TensorSpec
from .metrics import Metrics
from .models import ServedModel

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger("tilecast.serve")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, dict(headers or {})


class ServerConfig:
    def __init__(self, token: str | None = None, max_body_bytes: int = 64 << 20) -> None:
        self.token, self.max_body_bytes = token, max_body_bytes


def _status(exc: BaseException) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    if isinstance(exc, InputError | SpecError) or (isinstance(exc, ModelError) and isinstance(exc, ValueError)
                                                   and not isinstance(exc, OutputShapeError)):
        return 400
    return 500


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before or while reading it."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"the request body is {int(declared):,} bytes, over this server's limit of {limit:,}; "
                             "send fewer instances per request (max_payload_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"the request body is over this server's limit of {limit:,} bytes; send fewer "
                                 "instances per request (max_payload_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def _v2_shape(t: TensorSpec) -> list[int]:
    return [-1] if t.shape is None else [-1 if d is None else int(d) for d in t.shape]


def _v2_meta(t: TensorSpec) -> dict[str, Any]:
    return {"name": t.name, "datatype": v2.v2_datatype(t.dtype) if t.dtype is not None else "FP32",
            "shape": _v2_shape(t)}


def _tf_meta(t: TensorSpec) -> dict[str, Any]:
    dtype = type_name(enum_of(t.dtype)) if t.dtype is not None else "DT_FLOAT"
    shape: dict[str, Any] = ({"unknown_rank": True} if t.shape is None else
                             {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape],
                              "unknown_rank": False})
    return {"dtype": dtype, "tensor_shape": shape, "name": t.name}


def create_app(models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics,
               lifespan: Any = None) -> Starlette:
    default = next(iter(models.values()), None)
    aip_predict = os.environ.get("AIP_PREDICT_ROUTE")
    aip_health = os.environ.get("AIP_HEALTH_ROUTE")

    def model(name: str) -> ServedModel:
        if name not in models:
            raise HTTPError(404, f"unknown model {name!r}; this server hosts {sorted(models)}")
        return models[name]

    def authorize(request: Request) -> None:
        if not config.token:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if not header:
            raise HTTPError(401, "a bearer token is required: send 'Authorization: Bearer TOKEN'",
                            {"WWW-Authenticate": 'Bearer realm="tilecast"'})
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise HTTPError(403, "the bearer token is not valid for this server")

    def endpoint(protocol: str, public: bool = False):
        def wrap(fn):
            async def handler(request: Request) -> Response:
                t0 = time.perf_counter()
                name = request.path_params.get("name", "")
                status, instances = 500, 0
                ticket = metrics.enter()
                try:
                    if not public:
                        authorize(request)
                    response, instances = await fn(request)
                    status = response.status_code
                    return response
                except Exception as exc:
                    status = _status(exc)
                    if status == 500 and not isinstance(exc, TilecastError):
                        log.exception("internal error")
                    headers = exc.headers if isinstance(exc, HTTPError) else {}
                    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
                finally:
                    metrics.leave(ticket)
                    elapsed = time.perf_counter() - t0
                    name = request.path_params.get("name", "")  # routes that parse the path set it late
                    known = name if name in models else ("" if not name else "unknown")
                    metrics.requests.labels(known, protocol, str(status)).inc()
                    if status == 200 and instances:
                        metrics.latency.labels(known, protocol).observe(elapsed)
                    log.info("request", extra={"fields": {
                        "method": request.method, "path": request.url.path, "status": status,
                        "ms": round(elapsed * 1000, 2), "model": name or None, "protocol": protocol,
                        "instances": instances or None,
                        "client": request.client.host if request.client else None}})
            return handler
        return wrap

    # -- KServe v2 -----------------------------------------------------------------------------------------------
    @endpoint("v2", public=True)
    async def live(request: Request):
        return JSONResponse({"live": True}), 0

    @endpoint("v2", public=True)
    async def ready(request: Request):
        return JSONResponse({"ready": True}), 0

    @endpoint("v2")
    async def server_meta(request: Request):
        return JSONResponse({"name": "tilecast", "version": __version__, "extensions": ["binary_tensor_data"]}), 0

    @endpoint("v2")
    async def model_meta(request: Request):
        m = model(request.path_params["name"])
        sig = m.signature
        return JSONResponse({"name": m.name, "versions": [m.version], "platform": m.platform,
                             "inputs": [_v2_meta(t) for t in sig.inputs],
                             "outputs": [_v2_meta(t) for t in sig.outputs]}), 0

    @endpoint("v2")
    async def model_ready(request: Request):
        m = model(request.path_params["name"])
        return JSONResponse({"name": m.name, "ready": True}), 0

    @endpoint("v2")
    async def v2_infer(request: Request):
        m = model(request.path_params["name"])
        body = await read_body(request, config.max_body_bytes)
        hl = request.headers.get(v2.HEADER_LENGTH.lower())
        if hl is not None and not hl.isdigit():
            raise InputError(f"{v2.HEADER_LENGTH} must be a number, got {hl!r}")
        arrays, head = await run_in_threadpool(v2.decode_request, body, int(hl) if hl else None)
        wanted = [o["name"] for o in head.get("outputs") or [] if isinstance(o, dict) and "name" in o]
        out = await m.infer(arrays, wanted or None)
        binary = v2.binary_outputs(head, list(out))
        data, headers = await run_in_threadpool(v2.encode_response, m.name, out, head.get("id"), binary, m.version)
        n = len(next(iter(arrays.values())))
        return Response(data, headers=headers), n

    # -- TF Serving REST / Vertex AI / Earth Engine ------------------------------------------------------------------
    async def predict(m: ServedModel, request: Request) -> tuple[Response, int]:
        body = await read_body(request, config.max_body_bytes)

        def decode() -> tuple[dict, str]:
            try:
                parsed = json.loads(body)
            except ValueError as exc:
                raise InputError(f"the body is not valid JSON: {exc}") from None
            return rest.decode_request(parsed)

        arrays, fmt = await run_in_threadpool(decode)
        out = await m.infer(arrays)
        data = await run_in_threadpool(lambda: json.dumps(rest.encode_response(fmt, out),
                                                          separators=(",", ":")).encode())
        return Response(data, media_type="application/json"), len(next(iter(arrays.values())))

    _v1 = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<v>[^/:]+)|/labels/(?P<l>[^/:]+))?(?P<op>:predict|/metadata)?$")

    @endpoint("tfserving")
    async def v1(request: Request):
        m_ = _v1.match(request.path_params["rest"])
        if not m_:
            raise HTTPError(404, f"no such route: {request.url.path}")
        request.path_params["name"] = m_["name"]
        m = model(m_["name"])
        op = m_["op"]
        if op == ":predict":
            if request.method != "POST":
                raise HTTPError(405, ":predict takes POST")
            return await predict(m, request)
        if op == "/metadata":
            sig = m.signature
            signature = {"inputs": {t.name: _tf_meta(t) for t in sig.inputs},
                         "outputs": {t.name: _tf_meta(t) for t in sig.outputs},
                         "method_name": "tensorflow/serving/predict"}
            return JSONResponse({"model_spec": {"name": m.name, "signature_name": "", "version": m.version},
                                 "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}), 0
        return JSONResponse({"model_version_status": [{"version": m.version, "state": "AVAILABLE",
                                                       "status": {"error_code": "OK", "error_message": ""}}]}), 0

    @endpoint("vertex")
    async def vertex(request: Request):
        if default is None:
            raise HTTPError(404, "this server hosts no model")
        request.path_params["name"] = default.name
        return await predict(default, request)

    @endpoint("metrics")
    async def metrics_route(request: Request):
        data, content_type = metrics.render()
        return Response(data, media_type=content_type), 0

    routes = [
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2", server_meta),
        Route("/v2/models/{name}", model_meta),
        Route("/v2/models/{name}/versions/{version}", model_meta),
        Route("/v2/models/{name}/ready", model_ready),
        Route("/v2/models/{name}/versions/{version}/ready", model_ready),
        Route("/v2/models/{name}/infer", v2_infer, methods=["POST"]),
        Route("/v2/models/{name}/versions/{version}/infer", v2_infer, methods=["POST"]),
        Route("/v1/projects/{project}/locations/{location}/endpoints/{eid}:predict", vertex, methods=["POST"]),
        Route("/v1/models/{rest:path}", v1, methods=["GET", "POST"]),
        Route("/metrics", metrics_route),
    ]
    if aip_predict:
        routes.insert(0, Route(aip_predict, vertex, methods=["POST"]))
    if aip_health:
        routes.insert(0, Route(aip_health, ready))
    return Starlette(routes=routes, lifespan=lifespan)
