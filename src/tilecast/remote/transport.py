"""One class per protocol: encode a slice of a batch, send it with retries, decode the answer, read metadata."""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .._extras import require
from ..errors import EndpointError, InputError, OutputShapeError, SpecError
from ..payloads import grpc as grpc_codec
from ..payloads import rest, v2
from ..payloads.protos import GetModelMetadataRequest, GetModelMetadataResponse, PredictResponse, dtype_of
from ..runtimes.base import Signature, TensorSpec
from .endpoints import Endpoint, shown_url
from .retry import RETRY_STATUS, RetryPolicy, interruptible_event, retry_after

__all__ = ["GrpcTransport", "HttpTransport", "check_headers", "make_transport"]

log = logging.getLogger("tilecast.remote")
OPEN = Signature((), ())
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
METADATA_METHOD = "/tensorflow.serving.PredictionService/GetModelMetadata"


TOO_LARGE = re.compile(r"larger than max|exceeds maximum|more than this server's budget", re.IGNORECASE)
"""A RESOURCE_EXHAUSTED that no retry cures: gRPC's message size limits (C core, Go, Java/Node wording) and
``tilecast serve``'s memory budget; other RESOURCE_EXHAUSTED (quota) are retried."""


class _Retry(Exception):
    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after


def _with_retries(policy: RetryPolicy, what: str, attempt: Any, stop: threading.Event) -> Any:
    for i in range(policy.retries + 1):
        if stop.is_set():
            raise EndpointError(f"{what} was stopped (the run was interrupted or the model closed)")
        try:
            return attempt()
        except _Retry as exc:
            if i == policy.retries:
                raise EndpointError(
                    f"{what} failed after {policy.retries + 1} attempts; last: {exc}. Is the endpoint up and "
                    "scaled? Lower --concurrency, or try again later"
                ) from None
            log.info("retrying %s in a moment (attempt %d): %s", what, i + 1, exc)
            policy.sleep(i, exc.after, stop)
    raise AssertionError("unreachable")


def _spec_v2(t: Mapping[str, Any]) -> TensorSpec:
    shape = t.get("shape")
    dims = None if shape is None else tuple(None if int(d) < 0 else int(d) for d in shape)
    return TensorSpec(str(t["name"]), dims, v2.dtype_from_v2(str(t.get("datatype", ""))))


def _spec_tf(name: str, t: Mapping[str, Any]) -> TensorSpec:
    dtype = dtype_of(str(t.get("dtype", "")))
    shape_info = t.get("tensor_shape") or {}
    if dtype is None or shape_info.get("unknown_rank") or "dim" not in shape_info:
        return TensorSpec(name, None, dtype)  # a prepared model's DT_STRING inputs say nothing of the tile
    dims = tuple(None if int(d.get("size", -1)) < 0 else int(d["size"]) for d in shape_info["dim"])
    return TensorSpec(name, dims, dtype)


class HttpTransport:
    """KServe v2, TF Serving REST and Vertex AI over HTTP/1.1 keep-alive connections (httpx)."""

    def __init__(self, endpoint: Endpoint, headers: Mapping[str, str], timeout: float, concurrency: int,
                 retry: RetryPolicy, token: str | None) -> None:
        httpx = require("httpx", "server")
        self.endpoint, self.retry, self.timeout = endpoint, retry, timeout
        self.stop = interruptible_event()
        """Set by :meth:`close` or :func:`~tilecast.remote.retry.interrupt_waits`: retry waits end at once."""
        self._httpx = httpx
        base = dict(headers)
        self._credentials = None
        self._lock = threading.Lock()
        if token:
            base["Authorization"] = f"Bearer {token}"
        elif endpoint.protocol == "vertex":
            self._credentials = _google_credentials()
        limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
        self.client = httpx.Client(headers=base, timeout=timeout, limits=limits, follow_redirects=False)
        self.single_name = "output"
        self._ids = itertools.count(1)

    # -- signature ---------------------------------------------------------------------------------------------
    def signature(self) -> Signature:
        url = self.endpoint.metadata_url
        if url is None:
            return OPEN

        def attempt() -> Any:
            return self._get(url)

        resp = _with_retries(self.retry, f"reading the model metadata at {shown_url(url)}", attempt, self.stop)
        if resp.status_code in (401, 403):
            raise EndpointError(f"{shown_url(url)} answered {resp.status_code}: {resp.text[:300]}. Check --token-env / "
                                "headers")
        if resp.status_code != 200:
            return OPEN
        try:
            meta = resp.json()
            sig = self._parse_metadata(meta)
        except (ValueError, KeyError, TypeError, AttributeError):
            return OPEN
        if len(sig.outputs) == 1:
            self.single_name = sig.outputs[0].name
        return sig

    def _parse_metadata(self, meta: Any) -> Signature:
        if self.endpoint.protocol == "v2":
            return Signature(tuple(_spec_v2(t) for t in meta.get("inputs", [])),
                             tuple(_spec_v2(t) for t in meta.get("outputs", [])))
        defs = meta["metadata"]["signature_def"]["signature_def"]
        sig = defs.get(self.endpoint.signature_name or "serving_default") or next(iter(defs.values()))
        return Signature(tuple(_spec_tf(k, v) for k, v in sig.get("inputs", {}).items()),
                         tuple(_spec_tf(k, v) for k, v in sig.get("outputs", {}).items()))

    # -- requests ----------------------------------------------------------------------------------------------
    def encode(self, batch: Mapping[str, np.ndarray], start: int, stop: int) -> tuple[bytes, dict[str, str]]:
        fmt = self.endpoint.payload_format
        if fmt in ("V2_BINARY", "V2_JSON"):
            part = {k: v[start:stop] for k, v in batch.items()}
            return v2.encode_request(part, binary=fmt == "V2_BINARY", request_id=f"{next(self._ids)}")
        extra = {"signature_name": self.endpoint.signature_name} if self.endpoint.signature_name else None
        return rest.encode_request_body(fmt, batch, start, stop, extra), {"Content-Type": "application/json"}

    def size(self, request: tuple[bytes, dict[str, str]]) -> int:
        return len(request[0])

    def send(self, request: tuple[bytes, dict[str, str]], n: int, first: int) -> dict[str, np.ndarray]:
        body, headers = request
        url = self.endpoint.infer_url
        what = f"the request for instances {first}..{first + n - 1} to {shown_url(url)}"

        def attempt() -> Any:
            return self._post(url, body, headers)

        resp = _with_retries(self.retry, what, attempt, self.stop)
        if resp.status_code != 200:
            raise EndpointError(f"{what} failed with HTTP {resp.status_code}: {_error_text(resp)}")
        return self.decode(resp, n, first)

    def decode(self, resp: Any, n: int, first: int) -> dict[str, np.ndarray]:
        fmt = self.endpoint.payload_format
        try:
            if fmt in ("V2_BINARY", "V2_JSON"):
                hl = resp.headers.get(v2.HEADER_LENGTH)
                return v2.decode_response(resp.content, int(hl) if hl else None, n, first)
            try:
                body = json.loads(resp.content)
            except ValueError as exc:
                raise OutputShapeError(f"the answer is not valid JSON ({exc}); {len(resp.content)} bytes") from None
            return rest.decode_response(body, n, self.single_name, first)
        except OutputShapeError as exc:
            raise OutputShapeError(f"malformed answer from {shown_url(self.endpoint.infer_url)}: {exc}") from None

    def _auth(self) -> dict[str, str]:
        if self._credentials is None:
            return {}
        with self._lock:
            if not self._credentials.valid:
                request = require("google.auth.transport.requests", "server").Request()
                self._credentials.refresh(request)
            return {"Authorization": f"Bearer {self._credentials.token}"}

    def _get(self, url: str) -> Any:
        return self._call("GET", url, None, {})

    def _post(self, url: str, body: bytes, headers: Mapping[str, str]) -> Any:
        return self._call("POST", url, body, headers)

    def _call(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]) -> Any:
        httpx = self._httpx
        try:
            resp = self.client.request(method, url, content=body, headers={**headers, **self._auth()})
        except httpx.TimeoutException as exc:
            raise _Retry(f"no answer within {self.timeout:g} s ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}") from None
        if resp.status_code in RETRY_STATUS:
            raise _Retry(f"HTTP {resp.status_code}: {_error_text(resp)}", retry_after(resp.headers.get("Retry-After")))
        return resp

    def close(self) -> None:
        self.stop.set()
        self.client.close()


def _error_text(resp: Any) -> str:
    try:
        body = resp.json()
        if isinstance(body, dict) and "error" in body:
            return str(body["error"])[:500]
    except ValueError:
        pass
    return resp.text[:300] or resp.reason_phrase


def _google_credentials() -> Any:
    google_auth = require("google.auth", "server")
    try:
        credentials, _ = google_auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except Exception as exc:
        raise EndpointError(
            f"no Google credentials for Vertex AI ({exc}); run `gcloud auth application-default login`, or pass "
            "token= (--token-env)"
        ) from None
    return credentials


class GrpcTransport:
    """TF Serving's ``PredictionService/Predict`` over gRPC, with the protobuf classes from :mod:`..payloads`."""

    def __init__(self, endpoint: Endpoint, headers: Mapping[str, str], timeout: float, max_bytes: int,
                 retry: RetryPolicy, token: str | None) -> None:
        self.grpc = grpc = require("grpc", "server")
        self.endpoint, self.retry, self.timeout = endpoint, retry, timeout
        self.stop = interruptible_event()
        """Set by :meth:`close` or :func:`~tilecast.remote.retry.interrupt_waits`: retry waits end at once."""
        options = [("grpc.max_send_message_length", max(max_bytes * 2, 64 << 20)),
                   ("grpc.max_receive_message_length", max(max_bytes * 8, 256 << 20))]
        if endpoint.secure:
            self.channel = grpc.secure_channel(endpoint.infer_url, grpc.ssl_channel_credentials(), options=options)
        else:
            self.channel = grpc.insecure_channel(endpoint.infer_url, options=options)
        self.predict = self.channel.unary_unary(
            PREDICT_METHOD, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=PredictResponse.FromString,
        )
        self.get_metadata = self.channel.unary_unary(
            METADATA_METHOD, request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=GetModelMetadataResponse.FromString,
        )
        self.metadata = [(k.lower(), v) for k, v in headers.items()]
        if token:
            self.metadata.append(("authorization", f"Bearer {token}"))

    def signature(self) -> Signature:
        """From ``GetModelMetadata`` (TF Serving and ``tilecast serve`` answer it); open when not offered."""
        grpc = self.grpc
        req = GetModelMetadataRequest()
        req.model_spec.name = self.endpoint.model or ""
        req.metadata_field.append("signature_def")
        what = f"reading the model metadata at {self.endpoint.infer_url}"

        def attempt() -> Any:
            try:
                return self.get_metadata(req, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise _Retry(f"{code.name}: {exc.details()}") from None
                if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
                            grpc.StatusCode.NOT_FOUND):
                    raise EndpointError(f"{what} failed: {code.name}: {exc.details()}") from None
                return None

        resp = _with_retries(self.retry, what, attempt, self.stop)
        if resp is None:
            return OPEN
        try:
            inputs, outputs = grpc_codec.signature_from_metadata(resp, self.endpoint.signature_name)
        except (InputError, ValueError, KeyError):
            return OPEN
        return Signature(tuple(TensorSpec(*t) for t in inputs), tuple(TensorSpec(*t) for t in outputs))

    def encode(self, batch: Mapping[str, np.ndarray], start: int, stop: int) -> Any:
        e = self.endpoint
        return grpc_codec.encode_request(e.payload_format, batch, start, stop, e.model or "", e.signature_name,
                                         e.version)

    def size(self, request: Any) -> int:
        return request.ByteSize()

    def send(self, request: Any, n: int, first: int) -> dict[str, np.ndarray]:
        grpc = self.grpc
        what = f"the gRPC Predict for instances {first}..{first + n - 1} to {self.endpoint.infer_url}"
        retryable = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                     grpc.StatusCode.DEADLINE_EXCEEDED}

        def attempt() -> Any:
            try:
                return self.predict(request, timeout=self.timeout, metadata=self.metadata)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED and TOO_LARGE.search(exc.details() or ""):
                    raise EndpointError(
                        f"{what} failed: {code.name}: {exc.details()}. The request is over what the server takes "
                        "and always will be; lower --max-payload-bytes (max_payload_bytes) to its limit"
                    ) from None
                if code in retryable:
                    raise _Retry(f"{code.name}: {exc.details()}") from None
                raise EndpointError(f"{what} failed: {code.name}: {exc.details()}") from None

        resp = _with_retries(self.retry, what, attempt, self.stop)
        try:
            return grpc_codec.decode_response(resp, n, first)
        except OutputShapeError as exc:
            raise OutputShapeError(f"malformed answer from {shown_url(self.endpoint.infer_url)}: {exc}") from None

    def close(self) -> None:
        self.stop.set()
        self.channel.close()


_HTTP_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_GRPC_NAME = re.compile(r"[0-9a-z_.\-]+")
_VALUE = re.compile(r"[\t\x20-\x7e]*")


def check_headers(headers: Mapping[str, str], token: str | None, grpc: bool = False) -> None:
    """Refuse, before anything is sent, header names and values that HTTP/2 metadata or HTTP/1.1 cannot carry.

    Sent as they are, httpx's error quotes the value (a leaked token, retried six times) and gRPC only says
    ``Invalid metadata``; these errors name the header, never its value."""
    named = [(k, v, f"the value of header {k!r}") for k, v in headers.items()]
    if token is not None:
        named.append(("Authorization", f"Bearer {token}", "the bearer token (token= / --token-env)"))
    for name, value, what in named:
        key = name.lower() if grpc and isinstance(name, str) else name
        if not isinstance(key, str) or not (_GRPC_NAME if grpc else _HTTP_NAME).fullmatch(key) or (
                grpc and key.endswith("-bin")):
            rule = ("lowercase letters, digits, '-', '_' and '.', not ending in -bin (binary metadata)" if grpc
                    else "letters, digits and !#$%&'*+-.^_`|~")
            raise SpecError(f"header name {name!r:.80} is not valid; a {'gRPC metadata key' if grpc else 'header name'}"
                            f" has {rule}")
        if not isinstance(value, str) or not _VALUE.fullmatch(value):
            raise SpecError(f"{what} has a line break, a control character or a character that is not ASCII (a "
                            "trailing newline from the file it was read from?); header values must be printable "
                            "ASCII")
        if value != value.strip(" \t"):
            raise SpecError(f"{what} starts or ends with a space or tab, which HTTP does not allow in a header "
                            "value; remove them")


def make_transport(endpoint: Endpoint, headers: Mapping[str, str], timeout: float, concurrency: int,
                   max_bytes: int, retry: RetryPolicy, token: str | None) -> HttpTransport | GrpcTransport:
    check_headers(headers, token, grpc=endpoint.protocol == "grpc")
    if endpoint.protocol == "grpc":
        return GrpcTransport(endpoint, headers, timeout, max_bytes, retry, token)
    return HttpTransport(endpoint, headers, timeout, concurrency, retry, token)

