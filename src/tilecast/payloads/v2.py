"""KServe v2 / Open Inference Protocol bodies: JSON, and the binary tensor data extension.

With the extension, raw little-endian tensor bytes follow the JSON header, whose length travels in the
``Inference-Header-Content-Length`` HTTP header (Triton and KServe's convention).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, OutputShapeError
from .checks import DecodeBudget, check_shape, declared_bytes, fit_dtype, json_numbers, require_finite

__all__ = [
    "HEADER_LENGTH",
    "JSON_FIX",
    "decode_request",
    "decode_response",
    "dtype_from_v2",
    "encode_request",
    "encode_response",
    "requested_outputs",
    "v2_datatype",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_FIX = ("send it as V2_BINARY (the binary tensor data extension carries NaN exactly), or give the raster a nodata "
            "value so those pixels are masked and sent as the fill value (--fill-value)")
"""What a client can do about NaN in a V2_JSON request (:func:`~.checks.json_numbers`)."""

_V2 = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
_FROM_NP = {np.dtype(v): k for k, v in _V2.items()}


def v2_datatype(dtype: Any) -> str:
    """The v2 datatype of a numpy dtype of either byte order (the bytes sent are little-endian)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return "BYTES"
    try:
        return _FROM_NP[dtype.newbyteorder("=")]
    except KeyError:
        raise InputError(f"dtype {dtype} has no KServe v2 datatype; cast it (e.g. to float32)") from None


def dtype_from_v2(name: str) -> np.dtype | None:
    t = _V2.get(str(name).upper())
    return np.dtype(t) if t is not None else None


def _bytes_of(a: np.ndarray) -> bytes | memoryview:
    """The tensor's binary data: a view of a contiguous little-endian array (no copy; the body is joined once)."""
    if a.dtype.kind in "OSU":
        parts = []
        for v in a.reshape(-1):
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)) + b)
        return b"".join(parts)
    return memoryview(np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(-1)).cast("B")


def _from_bytes(raw: bytes | memoryview, datatype: str, shape: tuple[int, ...], where: str, error: type
                ) -> np.ndarray:
    count = declared_bytes(shape, 1)
    if datatype == "BYTES":
        out, pos, mv = [], 0, memoryview(raw)
        while pos + 4 <= len(mv) and len(out) <= count:
            (size,) = struct.unpack_from("<I", mv, pos)
            out.append(bytes(mv[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if len(out) != count or pos != len(mv):
            raise error(f"{where}: the BYTES data do not make {count} elements of shape {list(shape)}")
        return np.array(out, dtype=object).reshape(shape)
    dtype = dtype_from_v2(datatype)
    if dtype is None:
        raise error(f"{where}: unknown datatype {datatype!r}; use one of {sorted(_V2)} or BYTES")
    if len(raw) != count * dtype.itemsize:
        raise error(f"{where}: {len(raw)} bytes of {datatype} do not make shape {list(shape)}")
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)


def _from_json(t: Mapping[str, Any], shape: tuple[int, ...], where: str, error: type, strict: bool) -> np.ndarray:
    datatype = str(t.get("datatype", "")).upper()
    data = t.get("data")
    if data is None:
        raise error(f'{where}: "data" is missing or null (and there is no binary_data_size); send the values')
    if datatype == "BYTES":
        arr = np.array([d.encode() if isinstance(d, str) else d for d in np.asarray(data, dtype=object).reshape(-1)],
                       dtype=object)
    else:
        dtype = dtype_from_v2(datatype)
        if dtype is None:
            raise error(f"{where}: unknown datatype {datatype!r}; use one of {sorted(_V2)} or BYTES")
        try:
            arr = np.asarray(data)
            if strict:  # numbers only: no null (it would become NaN), no strings, no values the datatype wraps
                if arr.dtype.kind not in "biuf":
                    raise InputError(f"data must be numbers, got {arr.dtype} (null, strings, nested objects, "
                                     "ragged lists, or integers too large for 64 bits?)")
                arr = fit_dtype(require_finite(arr, "data"), dtype, "data")
            arr = np.asarray(arr, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, OverflowError) as exc:
            raise error(f"{where}: data is not {datatype}: {exc}") from None
    if arr.size != declared_bytes(shape, 1):
        raise error(f"{where}: {arr.size} values do not make shape {list(shape)}")
    return arr.reshape(shape)


def _split(body: bytes, header_length: int | None, error: type) -> tuple[dict[str, Any], memoryview]:
    n = len(body) if header_length is None else header_length
    if n > len(body):
        raise error(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
    try:
        head = json.loads(bytes(body[:n]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise error(f"the JSON header is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(head, dict):
        raise error("the JSON header must be an object")
    return head, memoryview(body)[n:]


def _binary_size(t: Mapping[str, Any], where: str, error: type) -> int | None:
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise error(f'{where}: "parameters" must be an object')
    size = params.get("binary_data_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise error(f"{where}: binary_data_size must be a non-negative integer, got {size!r:.40}")
    return size


def _tensors(items: Any, tail: memoryview, field: str, error: type, budget: DecodeBudget | None = None
             ) -> dict[str, np.ndarray]:
    if not isinstance(items, list):
        raise error(f'"{field}" must be a list of tensors')
    out: dict[str, np.ndarray] = {}
    pos = 0
    for j, t in enumerate(items):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or "shape" not in t:
            raise error(f'{field}[{j}] must be an object with a string "name", a "shape" and a "datatype"')
        where = f"{field}[{j}] ({t['name']!r})"
        if t["name"] in out:
            raise error(f"{where}: the name is given twice")
        datatype = t.get("datatype", "")
        if not isinstance(datatype, str):
            raise error(f"{where}: datatype must be a string such as FP32, got {datatype!r:.40}")
        try:
            shape = check_shape(t["shape"], where)
        except InputError as exc:
            raise error(str(exc)) from None
        if budget is not None:
            itemsize = 1 if datatype.upper() == "BYTES" else (dtype_from_v2(datatype) or np.dtype("u1")).itemsize
            budget.take(declared_bytes(shape, itemsize), where)
        size = _binary_size(t, where, error)
        if size is not None:
            if pos + size > len(tail):
                raise error(f"{where}: binary_data_size {size} runs past the end of the body")
            out[t["name"]] = _from_bytes(tail[pos : pos + size], datatype.upper(), shape, where, error)
            pos += size
        else:
            out[t["name"]] = _from_json(t, shape, where, error, strict=budget is not None)
    return out


def _encode(head: dict[str, Any], key: str, arrays: Mapping[str, np.ndarray], binary: set[str] | bool,
            extra: Mapping[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    tensors, chunks = [], []
    for name, a in arrays.items():
        a = np.asarray(a)
        t: dict[str, Any] = {"name": name, "shape": list(a.shape), "datatype": v2_datatype(a.dtype)}
        if binary is True or (binary and name in binary):
            raw = _bytes_of(a)
            t["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            t["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else v for v in a.reshape(-1).tolist()]
        tensors.append(t)
    head = {**head, key: tensors, **(extra or {})}
    text = json.dumps(head, separators=(",", ":")).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return b"".join([text, *chunks]), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def encode_request(arrays: Mapping[str, np.ndarray], binary: bool = True, outputs: Sequence[str] | None = None,
                   request_id: str | None = None) -> tuple[bytes, dict[str, str]]:
    """An infer request; with ``binary``, inputs travel as raw bytes and binary outputs are asked for. Without it,
    NaN or infinities are an :class:`InputError` (the v2 JSON form is plain JSON, which has no NaN)."""
    if not binary:
        for k, a in arrays.items():
            json_numbers(np.asarray(a), f"input {k!r} (V2_JSON)", JSON_FIX)
    extra: dict[str, Any] = {}
    if binary:
        extra["parameters"] = {"binary_data_output": True}
        if outputs:
            extra["outputs"] = [{"name": o, "parameters": {"binary_data": True}} for o in outputs]
    elif outputs:
        extra["outputs"] = [{"name": o} for o in outputs]
    return _encode({"id": request_id} if request_id else {}, "inputs", arrays, binary, extra)


def decode_request(body: bytes, header_length: int | None, budget: DecodeBudget | None = None
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Inputs and the rest of the header (``id``, ``outputs``, ``parameters``), each field checked.

    ``budget`` (:class:`~.checks.DecodeBudget`): what the declared shapes may take in all, charged before any
    tensor is built; with it, JSON data must also be finite numbers that fit the declared datatype."""
    head, tail = _split(body, header_length, InputError)
    if "inputs" not in head:
        raise InputError('an infer request needs "inputs"')
    if not isinstance(head.get("parameters") or {}, dict):
        raise InputError('"parameters" must be an object')
    requested_outputs(head)
    flags = [("parameters.binary_data_output", (head.get("parameters") or {}).get("binary_data_output"))]
    flags += [(f"outputs[{i}].parameters.binary_data", (o.get("parameters") or {}).get("binary_data"))
              for i, o in enumerate(head.get("outputs") or [])]
    for field, value in flags:
        if value is not None and not isinstance(value, bool):
            raise InputError(f"{field} must be true or false, got {json.dumps(value)[:40]}")
    return _tensors(head["inputs"], tail, "inputs", InputError, budget), head


def requested_outputs(head: Mapping[str, Any]) -> list[str]:
    """The output names an infer request asks for (empty: all); ``"outputs"`` must be a list of named objects."""
    outputs = head.get("outputs")
    if outputs is None:
        return []
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                and isinstance(o.get("parameters") or {}, dict) for o in outputs):
        raise InputError('"outputs" must be a list of objects like {"name": "...", "parameters": {...}}, '
                         f"got {json.dumps(outputs)[:80]}")
    return [o["name"] for o in outputs]


def binary_outputs(head: Mapping[str, Any], names: Sequence[str]) -> set[str]:
    """Which outputs the client wants as binary data."""
    default = bool((head.get("parameters") or {}).get("binary_data_output", False))
    wanted = {o.get("name"): (o.get("parameters") or {}).get("binary_data", default)
              for o in head.get("outputs") or [] if isinstance(o, dict)}
    return {n for n in names if wanted.get(n, default)}


def encode_response(model_name: str, outputs: Mapping[str, np.ndarray], request_id: str | None = None,
                    binary: set[str] | bool = False, version: str | None = None) -> tuple[bytes, dict[str, str]]:
    head: dict[str, Any] = {"model_name": model_name}
    if version:
        head["model_version"] = version
    if request_id is not None:
        head["id"] = request_id
    return _encode(head, "outputs", outputs, binary)


def decode_response(body: bytes, header_length: int | None, n: int, first: int = 0) -> dict[str, np.ndarray]:
    """Outputs of an infer answer for ``n`` instances; errors name the field and the instances."""
    head, tail = _split(body, header_length, OutputShapeError)
    if "outputs" not in head:
        detail = f": {head['error']}" if "error" in head else ""
        raise OutputShapeError(f'the answer has no "outputs" field (keys {sorted(head)}){detail}')
    out = _tensors(head["outputs"], tail, "outputs", OutputShapeError)
    for k, v in out.items():
        if v.ndim == 0 or v.shape[0] != n:
            raise OutputShapeError(
                f"output {k!r} has shape {list(v.shape)}; expected {n} instances "
                f"(instances {first}..{first + n - 1} of the batch) on the first axis"
            )
    return out
