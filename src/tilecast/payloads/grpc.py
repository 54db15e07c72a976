"""TF Serving ``PredictRequest`` / ``PredictResponse`` in Earth Engine's gRPC payload formats.

- ``GRPC_TF_TENSORS``: one typed tensor ``[N, ...]`` per input.
- ``GRPC_SERIALIZED_TF_TENSORS``: one DT_STRING tensor ``[N]`` per input, each element an Earth Engine tensor string.
- ``GRPC_TF_EXAMPLES``: one DT_STRING tensor ``[N]`` named ``"input"``, each a serialized ``tf.train.Example`` with
  one flattened feature per input (float_list / int64_list, row-major). tilecast adds an int64 feature
  ``tilecast_shape/NAME`` with each input's shape; parsers that don't ask for it ignore it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InputError, OutputShapeError
from .checks import DecodeBudget, check_shape
from .protos import DT_STRING, Example, PredictRequest, PredictResponse, make_ndarray, make_tensor_proto
from .tensors import b64_to_tensor, tensor_to_b64

__all__ = [
    "EXAMPLES_INPUT",
    "SHAPE_FEATURE",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
    "metadata_response",
    "signature_from_metadata",
]

EXAMPLES_INPUT = "input"
SHAPE_FEATURE = "tilecast_shape/"


def _example(batch: Mapping[str, np.ndarray], i: int) -> bytes:
    ex = Example()
    for name, a in batch.items():
        v = a[i]
        feat = ex.features.feature[name]
        if v.dtype.kind in "biu":
            feat.int64_list.value.extend(v.reshape(-1).astype(np.int64).tolist())
        else:
            feat.float_list.value.extend(v.reshape(-1).astype(np.float32).tolist())
        ex.features.feature[SHAPE_FEATURE + name].int64_list.value.extend(v.shape)
    return ex.SerializeToString()


def encode_request(fmt: str, batch: Mapping[str, np.ndarray], start: int, stop: int, model: str,
                   signature: str | None = None, version: int | None = None) -> Any:
    req = PredictRequest()
    req.model_spec.name = model
    if signature:
        req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    part = {k: v[start:stop] for k, v in batch.items()}
    n = stop - start
    if fmt == "GRPC_TF_TENSORS":
        for k, v in part.items():
            req.inputs[k].CopyFrom(make_tensor_proto(v))
    elif fmt == "GRPC_SERIALIZED_TF_TENSORS":
        for k, v in part.items():
            req.inputs[k].CopyFrom(make_tensor_proto(np.array([tensor_to_b64(v[i]).encode() for i in range(n)],
                                                               dtype=object)))
    elif fmt == "GRPC_TF_EXAMPLES":
        req.inputs[EXAMPLES_INPUT].CopyFrom(make_tensor_proto(np.array([_example(part, i) for i in range(n)],
                                                                       dtype=object)))
    else:
        raise InputError(f"payload format {fmt} is not a gRPC format")
    return req


def _strings_to_arrays(values: Sequence[bytes], where: str, error: type, budget: DecodeBudget | None = None
                       ) -> np.ndarray:
    arrays = []
    for i, s in enumerate(values):
        try:
            arrays.append(b64_to_tensor(s, budget))
        except InputError as exc:
            raise error(f"{where}[{i}]: {exc}") from None
        if arrays[-1].shape != arrays[0].shape:
            raise error(f"{where}[{i}] has shape {list(arrays[-1].shape)} but [0] has {list(arrays[0].shape)}")
    return np.stack(arrays)


def _parse_examples(values: Sequence[bytes], shapes: Mapping[str, tuple[int, ...]] | None) -> dict[str, np.ndarray]:
    """Rows of tf.train.Examples; values are only reshaped (the message holds every one), never broadcast."""
    rows: dict[str, list[np.ndarray]] = {}
    for i, raw in enumerate(values):
        try:
            ex = Example.FromString(raw)
        except Exception as exc:
            raise InputError(f"input[{i}] is not a serialized tf.train.Example: {exc}") from None
        feats = ex.features.feature
        for name, f in feats.items():
            if name.startswith(SHAPE_FEATURE):
                continue
            kind = f.WhichOneof("kind")
            vals = np.asarray(f.float_list.value, np.float32) if kind == "float_list" else (
                np.asarray(f.int64_list.value, np.int64))
            if SHAPE_FEATURE + name in feats:
                shape = check_shape(list(feats[SHAPE_FEATURE + name].int64_list.value),
                                    f"input[{i}] feature {SHAPE_FEATURE + name!r}", allow_unknown=True)
            elif shapes and name in shapes:
                shape = shapes[name]
            else:
                side = round(np.sqrt(vals.size))
                if side * side != vals.size:
                    raise InputError(
                        f"input[{i}] feature {name!r}: cannot tell the shape of {vals.size} values; add an int64 "
                        f"feature {SHAPE_FEATURE + name!r} or use square tiles"
                    )
                shape = (side, side, 1)
            try:
                rows.setdefault(name, []).append(vals.reshape(shape))
            except ValueError:
                raise InputError(f"input[{i}] feature {name!r}: {vals.size} values do not make {list(shape)}") from None
    out = {}
    for name, arrs in rows.items():
        if len(arrs) != len(values):
            raise InputError(f"feature {name!r} is missing from some of the {len(values)} examples")
        if any(a.shape != arrs[0].shape for a in arrs):
            raise InputError(f"feature {name!r} changes shape between examples")
        out[name] = np.stack(arrs)
    return out


def decode_request(req: Any, shapes: Mapping[str, tuple[int, ...]] | None = None,
                   budget: DecodeBudget | None = None) -> tuple[dict[str, np.ndarray], str]:
    """Named batched arrays and the detected format. ``shapes``: per-instance input shapes, for Examples that
    don't carry theirs. ``budget``: what the declared shapes may take in all, charged before allocating."""
    arrays: dict[str, np.ndarray] = {}
    fmt = "GRPC_TF_TENSORS"
    for name, t in req.inputs.items():
        if t.dtype != DT_STRING:
            arrays[name] = make_ndarray(t, budget)
            continue
        values = list(t.string_val)
        if not values:
            raise InputError(f"input {name!r} is an empty DT_STRING tensor")
        try:
            arrays[name] = _strings_to_arrays(values, f"input {name!r}", InputError, budget)
            fmt = "GRPC_SERIALIZED_TF_TENSORS"
        except InputError:
            if name != EXAMPLES_INPUT:
                raise
            arrays.update(_parse_examples(values, shapes))
            fmt = "GRPC_TF_EXAMPLES"
    return arrays, fmt


def encode_response(fmt: str, outputs: Mapping[str, np.ndarray], model: str) -> Any:
    resp = PredictResponse()
    resp.model_spec.name = model
    for k, v in outputs.items():
        if fmt == "GRPC_SERIALIZED_TF_TENSORS":
            strings = np.array([tensor_to_b64(v[i]).encode() for i in range(len(v))], dtype=object)
            resp.outputs[k].CopyFrom(make_tensor_proto(strings))
        else:
            resp.outputs[k].CopyFrom(make_tensor_proto(v))
    return resp


def decode_response(resp: Any, n: int, first: int = 0) -> dict[str, np.ndarray]:
    out = {}
    for k, t in resp.outputs.items():
        try:
            arr = (_strings_to_arrays(list(t.string_val), f"output {k!r}", OutputShapeError) if t.dtype == DT_STRING
                   else make_ndarray(t))
        except InputError as exc:
            raise OutputShapeError(f"output {k!r}: {exc}") from None
        if arr.ndim == 0 or arr.shape[0] != n:
            raise OutputShapeError(
                f"output {k!r} has shape {list(arr.shape)}; expected {n} instances "
                f"(instances {first}..{first + n - 1} of the batch) on the first axis"
            )
        out[k] = arr
    if not out:
        raise OutputShapeError("the PredictResponse has no outputs")
    return out


def metadata_response(model: str, version: str, signature: Any) -> Any:
    """``GetModelMetadataResponse`` with a ``signature_def`` for a runtime :class:`~tilecast.runtimes.Signature`
    (-1 for dynamic dimensions, unknown rank when the shape is unknown)."""
    from .protos import SIGNATURE_DEF_MAP_URL, GetModelMetadataResponse, SignatureDefMap, enum_of

    sdm = SignatureDefMap()
    sd = sdm.signature_def["serving_default"]
    sd.method_name = "tensorflow/serving/predict"
    for field, specs in ((sd.inputs, signature.inputs), (sd.outputs, signature.outputs)):
        for t in specs:
            info = field[t.name]
            info.name = f"{t.name}:0"
            info.dtype = enum_of(t.dtype) if t.dtype is not None else 1
            if t.shape is None:
                info.tensor_shape.unknown_rank = True
            else:
                for d in t.shape:
                    info.tensor_shape.dim.add(size=-1 if d is None else int(d))
    resp = GetModelMetadataResponse()
    resp.model_spec.name = model
    resp.model_spec.version.value = int(version) if str(version).isdigit() else 1
    meta = resp.metadata["signature_def"]
    meta.type_url = SIGNATURE_DEF_MAP_URL
    meta.value = sdm.SerializeToString()
    return resp


def signature_from_metadata(resp: Any, signature_name: str | None = None) -> tuple[list, list]:
    """``(inputs, outputs)`` as ``(name, shape or None, numpy dtype or None)`` from a ``GetModelMetadataResponse``;
    string (prepared-model) tensors say nothing of the tile, so their shape and dtype are None."""
    from .protos import SignatureDefMap, dtype_of

    if "signature_def" not in resp.metadata:
        raise InputError("the metadata has no signature_def")
    sdm = SignatureDefMap.FromString(resp.metadata["signature_def"].value)
    defs = sdm.signature_def
    if not defs:
        raise InputError("the metadata has no signatures")
    key = next((k for k in (signature_name, "serving_default") if k and k in defs), None)
    sd = defs[key] if key else next(iter(defs.values()))

    def specs(field: Any) -> list:
        out = []
        for name, info in field.items():
            dtype = dtype_of(info.dtype)
            if dtype is None or info.tensor_shape.unknown_rank:
                out.append((name, None, dtype))
            else:
                out.append((name, tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim), dtype))
        return out

    return specs(sd.inputs), specs(sd.outputs)
