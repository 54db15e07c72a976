"""Encoded images in ``{"b64": ...}`` values: what TorchServe's JSON envelope (Vertex AI's prebuilt PyTorch
container) hands its image handlers.

A ``{"b64": ...}`` value holds PNG, JPEG or TIFF bytes (told by their magic number) or, for anything else, a
serialized TensorProto (Earth Engine's ``SERIALIZED_TF_TENSORS``). An image decodes, through GDAL, to a channel-first
``(C, H, W)`` array of its own pixel type, as ``ToTensor`` sees it before it divides 8-bit values by 255; the served
model's pre-processing (a ``.mar`` handler's, a card's value scaling) then applies as for any other input. The
decoded size, read from the image's header, is charged to the request's :class:`~.checks.DecodeBudget` before a
pixel is decoded, so a small, highly compressed image cannot ask for gigabytes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import InputError
from .checks import DecodeBudget, declared_bytes
from .protos import TensorProto, make_ndarray

__all__ = ["IMAGE_MAGIC", "decode_b64_bytes", "decode_image", "image_kind"]

IMAGE_MAGIC: dict[bytes, str] = {
    b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF", b"MM\x00*": "TIFF", b"II+\x00": "TIFF", b"MM\x00+": "TIFF",
}
"""Leading bytes of the image formats accepted in ``{"b64": ...}`` values (TIFF: classic and BigTIFF)."""


def image_kind(raw: bytes) -> str | None:
    """``PNG``, ``JPEG`` or ``TIFF`` when ``raw`` starts with that format's magic number, else None."""
    for magic, kind in IMAGE_MAGIC.items():
        if raw.startswith(magic):
            return kind
    return None


def decode_image(raw: bytes, kind: str, budget: DecodeBudget | None = None) -> np.ndarray:
    """The ``(C, H, W)`` pixels of an encoded image, its size charged to ``budget`` before decoding."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
    from rasterio.io import MemoryFile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with MemoryFile(raw) as mem, mem.open() as ds:
                if ds.count < 1 or len(set(ds.dtypes)) != 1:
                    raise InputError(f"the {kind} image has {ds.count} bands of types {sorted(set(ds.dtypes))}; "
                                     "send bands of one pixel type")
                dtype = np.dtype(ds.dtypes[0])
                if budget is not None:
                    budget.take(declared_bytes((ds.count, ds.height, ds.width), dtype.itemsize),
                                f"a {ds.width}x{ds.height}x{ds.count} {kind} image")
                return ds.read()
    except (RasterioIOError, RasterioError) as exc:
        raise InputError(f"the {kind} image cannot be decoded ({str(exc)[:160]}); send a complete PNG, JPEG or "
                         "TIFF file") from None


def _tensor_proto(raw: bytes) -> Any:
    try:
        return TensorProto.FromString(raw)
    except Exception as exc:  # protobuf's DecodeError
        raise InputError(f"not a serialized TensorProto, nor a PNG, JPEG or TIFF image: {exc}") from None


def decode_b64_bytes(raw: bytes, budget: DecodeBudget | None = None) -> np.ndarray:
    """The array in the decoded bytes of a ``{"b64": ...}`` value: an image, or a serialized TensorProto."""
    kind = image_kind(raw)
    if kind is not None:
        return decode_image(raw, kind, budget)
    return make_ndarray(_tensor_proto(raw), budget)
