"""Endpoint URLs: which protocol, which model, and where infer and metadata live."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import SpecError
from ..payloads.formats import GRPC_FORMATS, REST_FORMATS, V2_FORMATS, normalize_format

__all__ = ["PROTOCOLS", "Endpoint", "parse_endpoint", "shown_url", "vertex_url"]

PROTOCOLS = ("v2", "tfserving", "vertex", "grpc")
_FORMATS = {"v2": V2_FORMATS, "tfserving": REST_FORMATS, "vertex": REST_FORMATS, "grpc": GRPC_FORMATS}
_DEFAULT_FORMAT = {"v2": "V2_BINARY", "tfserving": "SERIALIZED_TF_TENSORS", "vertex": "SERIALIZED_TF_TENSORS",
                   "grpc": "GRPC_TF_TENSORS"}
_VERTEX = re.compile(r"^projects/[^/]+/locations/(?P<region>[^/]+)/endpoints/[^/:]+$")
_SECRET = re.compile(r"token|key|sig|secret|pass|auth|cred|code", re.IGNORECASE)


def shown_url(url: str) -> str:
    """``url`` as messages and logs quote it: a password in it and the values of query parameters that look like
    credentials (``?token=``, ``&key=``, ``&sig=``...) become ``***``, so an error report can be shared as is."""
    if "://" not in url:
        return url  # a gRPC host:port target
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = parts.query
    if any(_SECRET.search(k) for k, _ in pairs):
        query = urlencode([(k, "***" if _SECRET.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


@dataclass(frozen=True)
class Endpoint:
    protocol: str
    payload_format: str
    infer_url: str
    """HTTP URL to POST to; for gRPC, the ``host:port`` target."""
    metadata_url: str | None
    model: str | None
    signature_name: str | None = None
    version: int | None = None
    secure: bool = False

    def describe(self) -> str:
        return f"{shown_url(self.infer_url)} ({self.protocol}, {self.payload_format})"


def vertex_url(resource: str) -> str:
    """``projects/P/locations/R/endpoints/ID`` -> the regional ``:predict`` URL (Vertex AI has no global one)."""
    m = _VERTEX.match(resource.strip("/"))
    if not m:
        raise SpecError(
            f"{resource!r} is not a Vertex AI endpoint; use projects/PROJECT/locations/REGION/endpoints/ID"
        )
    return f"https://{m['region']}-aiplatform.googleapis.com/v1/{resource.strip('/')}:predict"


def _infer_protocol(url: str, payload_format: str | None) -> str:
    if payload_format in GRPC_FORMATS or url.startswith(("grpc://", "grpcs://")):
        return "grpc"
    if _VERTEX.match(url.strip("/")) or "aiplatform.googleapis.com" in url:
        return "vertex"
    path = urlsplit(url).path
    if "/v2/models/" in path:
        return "v2"
    if "/v1/models/" in path:
        return "tfserving"
    if payload_format in V2_FORMATS:
        return "v2"
    raise SpecError(
        f"cannot tell the protocol of {url!r}; use a URL like http://HOST:PORT/v2/models/NAME (KServe v2), "
        "http://HOST:PORT/v1/models/NAME:predict (TF Serving), grpc://HOST:PORT/NAME, or pass protocol="
    )


def parse_endpoint(url: str, protocol: str | None = None, payload_format: str | None = None) -> Endpoint:
    """Work out the protocol (from the URL when not given), the payload format, and the URLs to call."""
    fmt = normalize_format(payload_format) if payload_format else None
    protocol = (protocol or _infer_protocol(url, fmt)).lower()
    if protocol not in PROTOCOLS:
        raise SpecError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    fmt = fmt or _DEFAULT_FORMAT[protocol]
    if fmt not in _FORMATS[protocol]:
        raise SpecError(
            f"payload format {fmt} does not go with protocol {protocol}; use one of {', '.join(_FORMATS[protocol])}"
        )
    if protocol == "grpc":
        return _grpc(url, fmt)
    if protocol == "vertex":
        infer = url if url.startswith(("http://", "https://")) else vertex_url(url)
        if not infer.endswith(":predict"):
            infer += ":predict"
        return Endpoint("vertex", fmt, infer, None, None)
    if not url.startswith(("http://", "https://")):
        raise SpecError(f"{url!r} is not an http(s) URL")
    parts = urlsplit(url)
    root = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    if protocol == "v2":
        m = re.search(r"^(?P<prefix>.*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<v>[^/]+))?(?:/infer)?$", path)
        if not m:
            raise SpecError(f"{url!r}: a KServe v2 URL looks like http://HOST:PORT/v2/models/NAME[/versions/V]")
        base = root + path.removesuffix("/infer")
        return Endpoint("v2", fmt, base + "/infer", base, m["name"], version=int(m["v"]) if m["v"] else None)
    m = re.search(r"^(?P<prefix>.*?)/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<v>[^/:]+))?(?::predict)?$", path)
    if not m:
        raise SpecError(f"{url!r}: a TF Serving URL looks like http://HOST:PORT/v1/models/NAME[/versions/V]:predict")
    base = root + path.removesuffix(":predict")
    return Endpoint("tfserving", fmt, base + ":predict", base + "/metadata", m["name"],
                    version=int(m["v"]) if m["v"] else None)


def _grpc(url: str, fmt: str) -> Endpoint:
    secure = url.startswith("grpcs://")
    rest = url.split("://", 1)[1] if "://" in url else url
    parts = urlsplit("//" + rest)
    name = parts.path.strip("/")
    name = name.removeprefix("v1/models/").split(":")[0]
    if not parts.netloc or not name:
        raise SpecError(f"{url!r}: a gRPC endpoint looks like grpc://HOST:PORT/MODEL[?signature=NAME&version=N]")
    query = parse_qs(parts.query)
    version = query.get("version", [None])[0]
    return Endpoint("grpc", fmt, parts.netloc, None, name, query.get("signature", [None])[0],
                    int(version) if version else None, secure)
