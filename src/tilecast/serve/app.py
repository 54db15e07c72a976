"""The HTTP side: KServe v2, TF Serving REST, the Earth Engine / Vertex AI ``:predict`` convention (with TorchServe's
JSON rows, as Vertex AI's prebuilt PyTorch container takes them), legacy AI Platform routes, and /metrics.

Built on Starlette. Request bodies are read with a hard size limit (413) and a deadline (408), charged to the
server's memory budget before they are decoded (503 with ``Retry-After`` when it is spent, see :mod:`.limits`), and
decoded with their declared shapes bounded by the body limit. Optional bearer-token auth guards every route but
health (401 without a token, 403 with a wrong one), and errors map to status codes (:mod:`.status`): bad input 400,
unknown model 404, model failures 500. Every answer is logged as one JSON line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import InputError, SpecError, TilecastError
from ..payloads import rest, v2
from ..payloads.checks import DecodeBudget, json_numbers
from ..payloads.protos import enum_of, type_name
from ..runtimes.base import TensorSpec
from .adapt import check_names
from .limits import MemoryBudget, Reservation, ServerLimits, json_cost
from .metrics import Metrics
from .models import ServedModel
from .status import RETRY_AFTER_S, HTTPError, status_of, token_status

__all__ = ["HEALTH_ROUTES", "ServerConfig", "create_app", "health_paths", "host_port", "read_body",
           "vertex_routes"]

log = logging.getLogger("tilecast.serve")

HEALTH_ROUTES = ("/v2/health/live", "/v2/health/ready")
HEAVY_BYTES = 1 << 20
"""JSON text (or arrays to write as JSON) from this size on is decoded and encoded one request at a time."""
Handler = Callable[[Request], Awaitable[tuple[Response, int]]]
_DIGITS = re.compile(r"[0-9]+")
"""A length header's value; ``str.isdigit`` also takes "²", which ``int`` refuses (a 500)."""


class ServerConfig:
    """What both protocols share: the token, the limits and the memory budget of requests in flight."""

    def __init__(self, token: str | None = None, max_body_bytes: int | None = None,
                 limits: ServerLimits | None = None) -> None:
        limits = limits or ServerLimits()
        if max_body_bytes is not None:
            limits = dataclasses.replace(limits, max_body_bytes=max_body_bytes)
        self.token, self.limits = token, limits
        self.budget = MemoryBudget(limits.memory_bytes)

    @property
    def max_body_bytes(self) -> int:
        return self.limits.max_body_bytes

    def decode_budget(self, reservation: Reservation) -> DecodeBudget:
        """What one request's declared shapes may take: the body limit, each allocation charged to ``reservation``."""
        return DecodeBudget(self.limits.max_body_bytes, lambda n, what: reservation.grow(n, what))


_ROUTE = re.compile(r"/[^\s{}?#]*")
"""A path Starlette routes literally: ``{x}`` would be a parameter; ``?`` and ``#`` never reach a route."""


def vertex_routes() -> tuple[str | None, str | None]:
    """``$AIP_PREDICT_ROUTE`` and ``$AIP_HEALTH_ROUTE`` (None when unset or empty): the paths a Vertex AI custom
    container gets its predictions and health checks on. They may be the same path (GET is health, POST predicts)."""
    routes = []
    for var in ("AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE"):
        path = os.environ.get(var, "").strip() or None
        if path is not None and not _ROUTE.fullmatch(path):
            raise SpecError(f"${var} is {path!r}, not a URL path: give one starting with / and without spaces, "
                            "{ } ? or # (e.g. /predict), or unset it")
        routes.append(path)
    return routes[0], routes[1]


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:8500``), as gRPC targets and URLs write it."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def health_paths() -> list[str]:
    """The routes that answer even when the server is saturated: KServe's health and ``$AIP_HEALTH_ROUTE``."""
    aip = vertex_routes()[1]
    return [*HEALTH_ROUTES, *([aip] if aip else [])]


async def read_body(request: Request, limit: int, reservation: Reservation | None = None,
                    timeout_s: float | None = None) -> bytes:
    """The body, refusing (413) anything over ``limit`` bytes before or while reading it, charging each chunk to
    ``reservation``, and giving up (408) when it takes longer than ``timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise HTTPError(413, f"the request body is {int(declared):,} bytes, over this server's limit of {limit:,}; "
                             "send fewer instances per request (max_payload_bytes)")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"the request body is over this server's limit of {limit:,} bytes; send "
                                         "fewer instances per request (max_payload_bytes)")
                if reservation is not None:
                    reservation.grow(len(chunk), "the request body")
                chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, f"the request body did not arrive within {timeout_s:g} s") from None
    return b"".join(chunks)


def _v2_meta(t: TensorSpec) -> dict[str, Any]:
    """KServe v2 tensor metadata. A tensor of unknown rank (a TorchScript model's) has no ``shape`` field: ``[-1]``
    would tell clients rank 1, and they could not bind the model's outputs to bands."""
    meta: dict[str, Any] = {"name": t.name, "datatype": v2.v2_datatype(t.dtype) if t.dtype is not None else "FP32"}
    if t.shape is not None:
        meta["shape"] = [-1 if d is None else int(d) for d in t.shape]
    return meta


def _tf_meta(t: TensorSpec) -> dict[str, Any]:
    dtype = type_name(enum_of(t.dtype)) if t.dtype is not None else "DT_FLOAT"
    shape: dict[str, Any] = ({"unknown_rank": True} if t.shape is None else
                             {"dim": [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape],
                              "unknown_rank": False})
    return {"dtype": dtype, "tensor_shape": shape, "name": t.name}


def _parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser's stack
        raise InputError(f"the body is not valid JSON: {str(exc)[:200]}") from None


def _decode_rest(body: bytes, budget: DecodeBudget, m: ServedModel) -> tuple[dict, str]:
    doc = _parse_json(body)
    if isinstance(doc, dict):
        m.check_signature(doc.get("signature_name"))
    return rest.decode_request(doc, budget)


REST_ANSWER_FIX = ("ask in SERIALIZED_TF_TENSORS (base64 TensorProtos carry NaN exactly) or over gRPC; JSON has no NaN "
                   "(TF Serving writes bare NaN tokens, which strict JSON parsers refuse)")
V2_ANSWER_FIX = ('ask for binary outputs ("parameters": {"binary_data_output": true}; tilecast\'s V2_BINARY format), '
                 "which carry NaN exactly")


def _encode_json(fmt: str, out: Mapping[str, Any]) -> bytes:
    """The ``:predict`` answer; NaN or infinities in a JSON number format are a 400 naming the output and the fix
    (strict JSON parsers refuse the bare ``NaN`` Python would write)."""
    if fmt in ("RAW_JSON", "ND_ARRAYS", "COLUMNAR_JSON"):
        for k, v in out.items():
            json_numbers(v, f"the model's output {k!r} (answered as {fmt})", REST_ANSWER_FIX)
    return rest.encode_response_body(fmt, out)


def _encode_v2(name: str, out: Mapping[str, Any], request_id: Any, binary: set[str], version: str
               ) -> tuple[bytes, dict[str, str]]:
    """The v2 infer answer; NaN or infinities in an output asked for as JSON are a 400 (v2 JSON is strict JSON)."""
    for k, v in out.items():
        if k not in binary:
            json_numbers(v, f"the model's output {k!r} (answered as JSON)", V2_ANSWER_FIX)
    return v2.encode_response(name, out, request_id, binary, version)


_V1 = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<v>[^/:]+)|/labels/(?P<l>[^/:]+))?(?P<op>:predict|/metadata)?$")

_AI_PLATFORM = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<v>[^/:]+))?:predict$")


class Handlers:
    """The routes of one app over its models; each handler returns ``(response, instances)``."""

    def __init__(self, models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics) -> None:
        self.models, self.config, self.metrics = models, config, metrics
        self.default = next(iter(models.values()), None)
        self.heavy = asyncio.Semaphore(1)

    async def offload(self, nbytes: int, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker thread; big JSON work one call at a time. ``json.loads`` and list conversions
        hold the GIL for their whole call, so several at once would stall the event loop (and health) for all of
        them back to back."""
        if nbytes < HEAVY_BYTES:
            return await run_in_threadpool(fn, *args)
        async with self.heavy:
            return await run_in_threadpool(fn, *args)

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise HTTPError(404, f"unknown model {name!r}; this server hosts {sorted(self.models)}")
        return self.models[name]

    def authorize(self, request: Request) -> None:
        status = token_status(request.headers.get("authorization", ""), self.config.token)
        if status == 401:
            raise HTTPError(401, "a bearer token is required: send 'Authorization: Bearer TOKEN'",
                            {"WWW-Authenticate": 'Bearer realm="tilecast"'})
        if status == 403:
            raise HTTPError(403, "the bearer token is not valid for this server")

    def endpoint(self, protocol: str, fn: Handler, public: bool = False) -> Callable[[Request], Awaitable[Response]]:
        """``fn`` with auth, error mapping, metrics and one log line per answer."""
        async def handler(request: Request) -> Response:
            t0 = time.perf_counter()
            status, instances = 500, 0
            ticket = self.metrics.enter()
            try:
                if not public:
                    self.authorize(request)
                response, instances = await fn(request)
                status = response.status_code
                return response
            except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing to log
                status = 499
                return Response(status_code=499)
            except asyncio.CancelledError:  # shutdown past --graceful-timeout, or a second Ctrl-C: an answer, not
                status = 503  # uvicorn's bare 500 and a logged traceback
                return JSONResponse({"error": "the server is shutting down; retry after a pause (or on another "
                                              "replica)"}, status_code=503,
                                    headers={"Retry-After": str(RETRY_AFTER_S), "Connection": "close"})
            except Exception as exc:
                status = status_of(exc)
                if status == 500 and not isinstance(exc, TilecastError):
                    log.exception("internal error")
                headers = exc.headers if isinstance(exc, HTTPError) else {}
                return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
            finally:
                self.metrics.leave(ticket)
                self.record(request, protocol, status, instances, time.perf_counter() - t0)
        return handler

    def record(self, request: Request, protocol: str, status: int, instances: int, elapsed: float) -> None:
        name = request.path_params.get("name", "")  # routes that parse the path set it late
        known = name if name in self.models else ("" if not name else "unknown")
        self.metrics.requests.labels(known, protocol, str(status)).inc()
        if status == 200 and instances:
            self.metrics.latency.labels(known, protocol).observe(elapsed)
        log.info("request", extra={"fields": {
            "method": request.method, "path": request.url.path, "status": status, "ms": round(elapsed * 1000, 2),
            "model": name or None, "protocol": protocol, "instances": instances or None,
            "client": request.client.host if request.client else None}})

    async def body(self, request: Request, reservation: Reservation) -> bytes:
        limits = self.config.limits
        return await read_body(request, limits.max_body_bytes, reservation, limits.body_timeout_s)

    # -- KServe v2 -----------------------------------------------------------------------------------------------
    async def live(self, request: Request) -> tuple[Response, int]:
        return JSONResponse({"live": True}), 0

    async def ready(self, request: Request) -> tuple[Response, int]:
        return JSONResponse({"ready": True}), 0

    async def server_meta(self, request: Request) -> tuple[Response, int]:
        return JSONResponse({"name": "tilecast", "version": __version__, "extensions": ["binary_tensor_data"]}), 0

    async def model_meta(self, request: Request) -> tuple[Response, int]:
        m = self.model(request.path_params["name"])
        sig = m.signature
        return JSONResponse({"name": m.name, "versions": [m.version], "platform": m.platform,
                             "inputs": [_v2_meta(t) for t in sig.inputs],
                             "outputs": [_v2_meta(t) for t in sig.outputs]}), 0

    async def model_ready(self, request: Request) -> tuple[Response, int]:
        m = self.model(request.path_params["name"])
        return JSONResponse({"name": m.name, "ready": True}), 0

    async def v2_infer(self, request: Request) -> tuple[Response, int]:
        m = self.model(request.path_params["name"])
        hl = request.headers.get(v2.HEADER_LENGTH.lower())
        if hl is not None and not _DIGITS.fullmatch(hl):  # not isdigit(): "²" is a digit that int() refuses
            raise InputError(f"{v2.HEADER_LENGTH} must be a number, got {hl!r}")
        with self.config.budget.reserve(0, "the request") as r:
            body = await self.body(request, r)
            split = len(body) if hl is None else min(int(hl), len(body))
            r.grow(json_cost(memoryview(body)[:split]) + 2 * (len(body) - split), "the request")
            arrays, head = await self.offload(split, v2.decode_request, body, int(hl) if hl else None,
                                              self.config.decode_budget(r))
            del body
            check_names(m.signature, arrays, m.bands, m.common_names)
            out = await m.infer(arrays, v2.requested_outputs(head) or None)
            binary = v2.binary_outputs(head, list(out))
            r.grow(sum(v.nbytes * (1 if k in binary else 12) for k, v in out.items()), "the answer", force=True)
            text = sum(v.nbytes for k, v in out.items() if k not in binary)
            data, headers = await self.offload(text, _encode_v2, m.name, out, head.get("id"), binary, m.version)
            return Response(data, headers=headers), len(next(iter(arrays.values())))

    # -- TF Serving REST / Vertex AI / Earth Engine ------------------------------------------------------------------
    async def predict(self, m: ServedModel, request: Request) -> tuple[Response, int]:
        with self.config.budget.reserve(0, "the request") as r:
            body = await self.body(request, r)
            r.grow(json_cost(body), "the JSON body")
            arrays, fmt = await self.offload(len(body), _decode_rest, body, self.config.decode_budget(r), m)
            del body
            out = await m.infer(arrays)
            r.grow(sum(v.nbytes * 12 for v in out.values()), "the answer", force=True)
            data = await self.offload(sum(v.nbytes for v in out.values()), _encode_json, fmt, out)
            return Response(data, media_type="application/json"), len(next(iter(arrays.values())))

    async def v1(self, request: Request) -> tuple[Response, int]:
        m_ = _V1.match(request.path_params["rest"])
        if not m_:
            raise HTTPError(404, f"no such route: {request.url.path}")
        request.path_params["name"] = m_["name"]
        m = self.model(m_["name"])
        op = m_["op"]
        if op == ":predict":
            if request.method != "POST":
                raise HTTPError(405, ":predict takes POST")
            return await self.predict(m, request)
        if op == "/metadata":
            sig = m.signature
            signature = {"inputs": {t.name: _tf_meta(t) for t in sig.inputs},
                         "outputs": {t.name: _tf_meta(t) for t in sig.outputs},
                         "method_name": "tensorflow/serving/predict"}
            return JSONResponse({"model_spec": {"name": m.name, "signature_name": "", "version": m.version},
                                 "metadata": {"signature_def": {"signature_def": {"serving_default": signature}}}}), 0
        return JSONResponse({"model_version_status": [{"version": m.version, "state": "AVAILABLE",
                                                       "status": {"error_code": "OK", "error_message": ""}}]}), 0

    async def vertex(self, request: Request) -> tuple[Response, int]:
        if self.default is None:
            raise HTTPError(404, "this server hosts no model")
        request.path_params["name"] = self.default.name
        return await self.predict(self.default, request)

    async def ai_platform(self, request: Request) -> tuple[Response, int]:
        """The legacy AI Platform route (``fromAiPlatformPredictor``): the model of that name, or the only one."""
        m_ = _AI_PLATFORM.match(request.path_params["rest"])
        if not m_:
            raise HTTPError(404, f"no such route: {request.url.path}; use /v1/projects/P/models/M[/versions/V]"
                                 ":predict")
        name = m_["name"]
        if name not in self.models and len(self.models) == 1:
            name = next(iter(self.models))
        request.path_params["name"] = name
        return await self.predict(self.model(name), request)

    async def metrics_route(self, request: Request) -> tuple[Response, int]:
        data, content_type = self.metrics.render()
        return Response(data, media_type=content_type), 0

    def routes(self) -> list[Route]:
        e = self.endpoint
        routes = [
            Route("/v2/health/live", e("v2", self.live, public=True)),
            Route("/v2/health/ready", e("v2", self.ready, public=True)),
            Route("/v2", e("v2", self.server_meta)),
            Route("/v2/models/{name}", e("v2", self.model_meta)),
            Route("/v2/models/{name}/versions/{version}", e("v2", self.model_meta)),
            Route("/v2/models/{name}/ready", e("v2", self.model_ready)),
            Route("/v2/models/{name}/versions/{version}/ready", e("v2", self.model_ready)),
            Route("/v2/models/{name}/infer", e("v2", self.v2_infer), methods=["POST"]),
            Route("/v2/models/{name}/versions/{version}/infer", e("v2", self.v2_infer), methods=["POST"]),
            Route("/v1/projects/{project}/locations/{location}/endpoints/{eid}:predict", e("vertex", self.vertex),
                  methods=["POST"]),
            Route("/v1/projects/{project}/models/{rest:path}", e("vertex", self.ai_platform), methods=["POST"]),
            Route("/v1/models/{rest:path}", e("tfserving", self.v1), methods=["GET", "POST"]),
            Route("/metrics", e("metrics", self.metrics_route)),
        ]
        aip_predict, aip_health = vertex_routes()
        if aip_predict:
            routes.insert(0, Route(aip_predict, e("vertex", self.vertex), methods=["POST"]))
        if aip_health:
            routes.insert(0, Route(aip_health, e("v2", self.ready, public=True)))
        return routes


def create_app(models: Mapping[str, ServedModel], config: ServerConfig, metrics: Metrics,
               lifespan: Any = None) -> Starlette:
    """The Starlette app serving ``models`` (name -> model) under ``config``."""
    return Starlette(routes=Handlers(models, config, metrics).routes(), lifespan=lifespan)
