"""TF Serving / Vertex AI ``:predict`` JSON bodies in Earth Engine's HTTP payload formats (and TorchServe's rows).

Client side: :func:`encode_request` and :func:`decode_response`. Server side: :func:`decode_request` (which also
detects the format) and :func:`encode_response`, which answers in the format it was asked in.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, OutputShapeError
from .checks import DecodeBudget, json_numbers, require_finite
from .images import decode_b64_bytes
from .tensors import b64_to_tensor, tensor_to_b64, tensor_to_b64_bytes, unb64

__all__ = ["NUMBER_FIX", "decode_request", "decode_response", "encode_request", "encode_request_body",
           "encode_response", "encode_response_body", "nd_instance"]


def nd_instance(batch: Mapping[str, np.ndarray], i: int) -> np.ndarray:
    """Earth Engine's ND_ARRAYS instance: the one input as is, or per-band ``(H, W, D)`` inputs channel-first."""
    arrays = list(batch.values())
    if len(arrays) == 1:
        return arrays[0][i]
    return np.concatenate([np.moveaxis(a[i].reshape((*a.shape[1:3], -1)), -1, 0) for a in arrays], axis=0)


NUMBER_FIX = ("send it in a binary payload format (SERIALIZED_TF_TENSORS or gRPC carry NaN exactly), or give the "
              "raster a nodata value so those pixels are masked and sent as the fill value (--fill-value)")
"""What a client can do about NaN in a JSON request (:func:`~.checks.json_numbers`)."""


def encode_request(fmt: str, batch: Mapping[str, np.ndarray], start: int, stop: int) -> dict[str, Any]:
    """The JSON body carrying instances ``start:stop`` of ``batch``; :class:`InputError` for NaN or infinities
    among the numbers (JSON has none: TF Serving writes bare ``NaN`` tokens, which strict parsers refuse)."""
    rng = range(start, stop)
    if fmt in ("RAW_JSON", "ND_ARRAYS", "COLUMNAR_JSON"):
        for k, v in batch.items():
            json_numbers(v[start:stop], f"input {k!r} ({fmt})", NUMBER_FIX, start)
    if fmt == "SERIALIZED_TF_TENSORS":
        return {"instances": [{k: tensor_to_b64(v[i]) for k, v in batch.items()} for i in rng]}
    if fmt == "RAW_JSON":
        return {"instances": [{k: _tolist(v[i]) for k, v in batch.items()} for i in rng]}
    if fmt == "ND_ARRAYS":
        return {"instances": [_tolist(nd_instance(batch, i)) for i in rng]}
    if fmt == "COLUMNAR_JSON":
        return {"inputs": {k: _tolist(v[start:stop]) for k, v in batch.items()}}
    raise InputError(f"payload format {fmt} is not a REST format")


def _rows_body(key: str, names: list[str] | None, columns: list[np.ndarray], rng: range,
               extra: Mapping[str, Any] | None) -> bytes:
    """``{key: [rows]}`` (plus ``extra``) as JSON bytes, each value a tensor string, written straight from the
    base64 bytes: web-safe base64 needs no JSON escaping, so the megabytes of a body are not scanned, decoded to
    ``str`` and encoded back as ``json.dumps`` would."""
    keys = [json.dumps(k).encode() + b':"' for k in names] if names is not None else None
    parts = [json.dumps({**(extra or {}), key: []}, separators=(",", ":")).encode()[:-2]]  # up to the "["
    for n, i in enumerate(rng):
        if n:
            parts.append(b",")
        if keys is None:
            parts += [b'"', tensor_to_b64_bytes(columns[0][i]), b'"']
            continue
        parts.append(b"{")
        for j, (k, col) in enumerate(zip(keys, columns, strict=True)):
            parts += [b"," if j else b"", k, tensor_to_b64_bytes(col[i]), b'"']
        parts.append(b"}")
    parts.append(b"]}")
    return b"".join(parts)


def encode_request_body(fmt: str, batch: Mapping[str, np.ndarray], start: int, stop: int,
                        extra: Mapping[str, Any] | None = None) -> bytes:
    """:func:`encode_request` as the JSON bytes to send, with ``extra`` top-level fields (``signature_name``)."""
    if fmt == "SERIALIZED_TF_TENSORS":
        return _rows_body("instances", list(batch), list(batch.values()), range(start, stop), extra)
    body = {**encode_request(fmt, batch, start, stop), **(extra or {})}
    return json.dumps(body, separators=(",", ":")).encode()


def encode_response_body(fmt: str, outputs: Mapping[str, np.ndarray]) -> bytes:
    """:func:`encode_response` as JSON bytes (tensor strings written straight, as in :func:`encode_request_body`)."""
    if fmt == "SERIALIZED_TF_TENSORS":
        names = list(outputs)
        n = len(next(iter(outputs.values())))
        return _rows_body("predictions", names if len(names) > 1 else None, list(outputs.values()), range(n), None)
    return json.dumps(encode_response(fmt, outputs), separators=(",", ":")).encode()


def _tolist(a: np.ndarray) -> Any:
    return a.tolist() if a.dtype.kind != "f" or a.dtype.itemsize >= 4 else a.astype(np.float32).tolist()


def _value(v: Any, where: str, budget: DecodeBudget | None = None, finite: bool = False) -> np.ndarray:
    """One JSON value: an Earth Engine tensor string, TF Serving's {"b64": ...}, or numbers (maybe as strings);
    ``finite``: refuse infinities and NaN among the numbers (requests; answers may carry NaN)."""
    try:
        if isinstance(v, str):
            return b64_to_tensor(v, budget)
        if isinstance(v, dict):
            if set(v) != {"b64"} or not isinstance(v["b64"], str):
                raise InputError(f"an object value must be {{'b64': '...'}}, got {sorted(v)}")
            return decode_b64_bytes(unb64(v["b64"]), budget)
        if v is None:
            raise InputError("null is not a value; send numbers")
        arr = np.asarray(v)
        if arr.dtype.kind in "US":  # RAW_JSON: "numerical values converted into JSON strings"
            arr = arr.astype(np.float64)
        if arr.dtype.kind not in "biuf":
            raise InputError(f"expected numbers, got {arr.dtype} (null values, nested objects, ragged or mixed "
                             "lists, or integers too large for 64 bits?)")
        return require_finite(arr, "the values") if finite else arr
    except InputError as exc:
        raise InputError(f"{where}: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(f"{where}: {exc}") from None


def _stack(values: Sequence[np.ndarray], where: str, error: type[Exception]) -> np.ndarray:
    first = values[0]
    for i, v in enumerate(values):
        if v.shape != first.shape:
            raise error(f"{where.format(i=i)} has shape {list(v.shape)} but instance 0 has {list(first.shape)}")
    return np.stack(values)


def decode_request(body: Any, budget: DecodeBudget | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Named batched arrays and the detected format. ND_ARRAYS / bare instances come back under the key ``""``.

    Rows follow TorchServe's JSON envelope (Vertex AI's prebuilt PyTorch container): ``{"b64": ...}`` holds an
    image (PNG/JPEG/TIFF, decoded to CHW) or a serialized TensorProto (:mod:`.images`), an object row holds inputs
    by name (``RAW_JSON``), a nested list is one tensor (``ND_ARRAYS``). ``"parameters"`` is accepted and unused.
    ``budget``: what the TensorProtos in the body may declare in all (:class:`~.checks.DecodeBudget`)."""
    if not isinstance(body, dict) or not ({"instances", "inputs"} & set(body)):
        raise InputError('the body must be a JSON object with "instances" (row format) or "inputs" (columnar)')
    if not isinstance(body.get("parameters", {}), dict):
        raise InputError('"parameters" must be a JSON object (Vertex AI\'s per-request parameters)')
    if "inputs" in body and "instances" not in body:
        cols = body["inputs"]
        if isinstance(cols, dict):
            return {k: _value(v, f"inputs[{k!r}]", budget, True) for k, v in cols.items()}, "COLUMNAR_JSON"
        return {"": _value(cols, "inputs", budget, True)}, "COLUMNAR_JSON"
    rows = body["instances"]
    if not isinstance(rows, list) or not rows:
        raise InputError('"instances" must be a non-empty list')
    if all(isinstance(r, dict) and "b64" not in r for r in rows):
        names = list(rows[0])
        for i, r in enumerate(rows):
            if list(r) != names and set(r) != set(names):
                raise InputError(f"instances[{i}] has keys {sorted(r)} but instances[0] has {sorted(names)}")
        fmt = "SERIALIZED_TF_TENSORS" if all(isinstance(v, str) for v in rows[0].values()) else "RAW_JSON"
        out = {}
        for k in names:
            vals = [_value(r[k], f"instances[{i}][{k!r}]", budget, True) for i, r in enumerate(rows)]
            out[k] = _stack(vals, f"instances[{{i}}][{k!r}]", InputError)
        return out, fmt
    if any(isinstance(r, dict) and "b64" not in r for r in rows):
        raise InputError('"instances" mixes objects and bare values; use one form')
    vals = [_value(r, f"instances[{i}]", budget, True) for i, r in enumerate(rows)]
    fmt = "SERIALIZED_TF_TENSORS" if isinstance(rows[0], str) else "ND_ARRAYS"
    return {"": _stack(vals, "instances[{i}]", InputError)}, fmt


def encode_response(fmt: str, outputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The ``:predict`` answer in the request's format; one output drops its name, as TF Serving does."""
    names = list(outputs)
    n = len(next(iter(outputs.values())))
    if fmt == "COLUMNAR_JSON":
        if len(names) == 1:
            return {"outputs": _tolist(outputs[names[0]])}
        return {"outputs": {k: _tolist(v) for k, v in outputs.items()}}
    enc = tensor_to_b64 if fmt == "SERIALIZED_TF_TENSORS" else _tolist
    if len(names) == 1:
        v = outputs[names[0]]
        return {"predictions": [enc(v[i]) for i in range(n)]}
    return {"predictions": [{k: enc(v[i]) for k, v in outputs.items()} for i in range(n)]}


def decode_response(body: Any, n: int, single_name: str, first: int = 0) -> dict[str, np.ndarray]:
    """Batched outputs from a ``:predict`` answer for ``n`` instances; errors name the instance (``first`` is the
    index of this request's first instance in the batch) and the field."""
    if not isinstance(body, dict):
        raise OutputShapeError(f"the endpoint's answer is a JSON {type(body).__name__}, not an object")
    if "predictions" not in body:
        if "outputs" in body:
            return _columnar(body["outputs"], n, single_name, first)
        detail = f": {body['error']}" if "error" in body else ""
        raise OutputShapeError(f'the endpoint\'s answer has no "predictions" field (keys {sorted(body)}){detail}')
    preds = body["predictions"]
    if not isinstance(preds, list):
        raise OutputShapeError(f'"predictions" is a {type(preds).__name__}, expected a list')
    if len(preds) != n:
        raise OutputShapeError(
            f"the endpoint returned {len(preds)} predictions for {n} instances "
            f"(instances {first}..{first + n - 1} of the batch)"
        )
    named = [p if isinstance(p, dict) and "b64" not in p else {single_name: p} for p in preds]
    names = list(named[0])
    out: dict[str, np.ndarray] = {}
    for k in names:
        vals = []
        for i, p in enumerate(named):
            if k not in p:
                raise OutputShapeError(
                    f"instance {first + i}: predictions[{i}] has no field {k!r} (it has {sorted(p)})"
                )
            try:
                vals.append(_value(p[k], f"instance {first + i}: predictions[{i}][{k!r}]"))
            except InputError as exc:
                raise OutputShapeError(str(exc)) from None
        out[k] = _stack(vals, f"instance {{i}}: predictions[{{i}}][{k!r}]", OutputShapeError)
    return out


def _columnar(cols: Any, n: int, single_name: str, first: int) -> dict[str, np.ndarray]:
    items = cols.items() if isinstance(cols, dict) else [(single_name, cols)]
    out = {}
    for k, v in items:
        try:
            arr = _value(v, f"outputs[{k!r}]")
        except InputError as exc:
            raise OutputShapeError(str(exc)) from None
        if arr.ndim == 0 or arr.shape[0] != n:
            raise OutputShapeError(
                f"outputs[{k!r}] has shape {list(arr.shape)}; expected {n} instances "
                f"(instances {first}..{first + n - 1} of the batch) on the first axis"
            )
        out[k] = arr
    return out


def std_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
