"""Payload format names: Earth Engine's, plus KServe v2 and TF Serving's columnar form."""

from __future__ import annotations

from ..errors import SpecError

__all__ = ["ALL_FORMATS", "GRPC_FORMATS", "REST_FORMATS", "V2_FORMATS", "normalize_format"]

REST_FORMATS = ("SERIALIZED_TF_TENSORS", "RAW_JSON", "ND_ARRAYS", "COLUMNAR_JSON")
"""TF Serving / Vertex ``:predict`` bodies. ``COLUMNAR_JSON`` is TF Serving's ``{"inputs": ...}`` form."""
GRPC_FORMATS = ("GRPC_TF_TENSORS", "GRPC_SERIALIZED_TF_TENSORS", "GRPC_TF_EXAMPLES")
V2_FORMATS = ("V2_BINARY", "V2_JSON")
"""KServe v2 / Open Inference Protocol: JSON with the binary tensor extension, or plain JSON."""
ALL_FORMATS = REST_FORMATS + GRPC_FORMATS + V2_FORMATS

_ALIASES = {
    "GRPC_SERIALIZED_TF_EXAMPLES": "GRPC_TF_EXAMPLES",
    "GRPC_SERAILZED_TF_EXAMPLES": "GRPC_TF_EXAMPLES",  # the typo in Earth Engine's guide
    "BINARY": "V2_BINARY",
    "JSON": "V2_JSON",
}


def normalize_format(name: str) -> str:
    """The canonical name of a payload format (case-insensitive; Earth Engine's aliases accepted)."""
    key = name.strip().upper().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in ALL_FORMATS:
        raise SpecError(f"unknown payload format {name!r}; use one of {', '.join(ALL_FORMATS)}")
    return key
