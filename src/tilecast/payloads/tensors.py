"""Earth Engine's tensor strings: web-safe, unpadded base64 of a serialized TensorProto."""

from __future__ import annotations

import binascii
from typing import Any

import numpy as np

from ..errors import InputError
from .checks import DecodeBudget
from .protos import TensorProto, make_ndarray, make_tensor_proto

__all__ = ["b64_to_tensor", "serialize_tensor", "tensor_to_b64", "tensor_to_b64_bytes", "unb64"]


def serialize_tensor(array: Any) -> bytes:
    """``tf.io.serialize_tensor``: the TensorProto bytes of ``array``."""
    return make_tensor_proto(array).SerializeToString()


_TO_WEBSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_WEBSAFE = bytes.maketrans(b"-_", b"+/")


def tensor_to_b64_bytes(array: Any) -> bytes:
    """:func:`tensor_to_b64` as ASCII bytes, made with one pass of each step (no ``=`` to strip: a slice)."""
    raw = serialize_tensor(array)
    text = binascii.b2a_base64(raw, newline=False).translate(_TO_WEBSAFE)
    pad = -len(raw) % 3
    return text[: len(text) - pad] if pad else text


def tensor_to_b64(array: Any) -> str:
    """``tf.io.encode_base64(tf.io.serialize_tensor(x))``: web-safe alphabet, no ``=`` padding."""
    return tensor_to_b64_bytes(array).decode("ascii")


def unb64(text: str | bytes) -> bytes:
    """Decode base64 in either alphabet, with or without padding (``tf.io.decode_base64`` and the standard one)."""
    try:
        data = text.encode("ascii") if isinstance(text, str) else bytes(text)
    except (UnicodeEncodeError, TypeError) as exc:
        raise InputError(f"not valid base64: {exc}") from None
    data = data.strip().translate(_FROM_WEBSAFE)  # one pass to the standard alphabet that binascii reads
    if len(data) % 4:
        data += b"=" * (-len(data) % 4)
    try:
        raw = binascii.a2b_base64(data)
    except (binascii.Error, ValueError) as exc:
        raise InputError(f"not valid base64: {exc}") from None
    if not raw:  # binascii skips characters outside the alphabet: "!!!" decodes to nothing, as "" does
        raise InputError(f"{text[:20]!r} decodes to no bytes (empty, or not base64); send base64 of a serialized "
                         "TensorProto (or of a PNG, JPEG or TIFF image)")
    return raw


def b64_to_tensor(text: str | bytes, budget: DecodeBudget | None = None) -> np.ndarray:
    """The array in an Earth Engine tensor string (its declared bytes charged to ``budget`` first)."""
    raw = unb64(text)
    try:
        proto = TensorProto.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError
        raise InputError(f"not a serialized TensorProto: {exc}") from None
    return make_ndarray(proto, budget)
