"""TensorFlow's TensorProto, Example and TF Serving's PredictRequest/Response as real protobuf message classes.

The classes are built from the official descriptors (see :mod:`.make_descriptors`) in a private descriptor pool, so
they never clash with TensorFlow's own classes when both are imported, and they work with any protobuf runtime
from 4.x on.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from ..errors import InputError
from .checks import DecodeBudget, check_shape, declared_bytes, fit_dtype

__all__ = [
    "DT_STRING",
    "SIGNATURE_DEF_MAP_URL",
    "Example",
    "GetModelMetadataRequest",
    "GetModelMetadataResponse",
    "PredictRequest",
    "PredictResponse",
    "SignatureDefMap",
    "TensorProto",
    "dtype_of",
    "enum_of",
    "make_ndarray",
    "make_tensor_proto",
]


@cache
def proto_pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    fds = descriptor_pb2.FileDescriptorSet.FromString(Path(__file__).with_name("tf_protos.binpb").read_bytes())
    for f in fds.file:
        pool.Add(f)
    return pool


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(proto_pool().FindMessageTypeByName(name))


TensorProto: Any = _message("tensorflow.TensorProto")
TensorShapeProto: Any = _message("tensorflow.TensorShapeProto")
Example: Any = _message("tensorflow.Example")
PredictRequest: Any = _message("tensorflow.serving.PredictRequest")
PredictResponse: Any = _message("tensorflow.serving.PredictResponse")
GetModelMetadataRequest: Any = _message("tensorflow.serving.GetModelMetadataRequest")
GetModelMetadataResponse: Any = _message("tensorflow.serving.GetModelMetadataResponse")
SignatureDefMap: Any = _message("tensorflow.serving.SignatureDefMap")
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"

_DT = proto_pool().FindEnumTypeByName("tensorflow.DataType").values_by_name
DT_STRING = _DT["DT_STRING"].number

# numpy dtype <-> TF DataType, and the TensorProto field that holds values when tensor_content is not used.
_TYPES: list[tuple[str, Any, str]] = [
    ("DT_FLOAT", np.float32, "float_val"),
    ("DT_DOUBLE", np.float64, "double_val"),
    ("DT_INT32", np.int32, "int_val"),
    ("DT_UINT8", np.uint8, "int_val"),
    ("DT_INT16", np.int16, "int_val"),
    ("DT_INT8", np.int8, "int_val"),
    ("DT_INT64", np.int64, "int64_val"),
    ("DT_BOOL", np.bool_, "bool_val"),
    ("DT_UINT16", np.uint16, "int_val"),
    ("DT_HALF", np.float16, "half_val"),
    ("DT_UINT32", np.uint32, "uint32_val"),
    ("DT_UINT64", np.uint64, "uint64_val"),
]
_TO_ENUM = {np.dtype(t): _DT[n].number for n, t, _ in _TYPES}
_FROM_ENUM = {_DT[n].number: (np.dtype(t), field) for n, t, field in _TYPES}
_NAMES = {_DT[n].number: n for n, _, _ in _TYPES} | {DT_STRING: "DT_STRING"}


def enum_of(dtype: Any) -> int:
    """The TF DataType number of a numpy dtype of either byte order (``tensor_content`` is written little-endian)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "OSU":
        return DT_STRING
    try:
        return _TO_ENUM[dtype.newbyteorder("=")]
    except KeyError:
        raise InputError(f"dtype {dtype} has no TensorFlow equivalent; cast the input (e.g. to float32)") from None


def dtype_of(enum: int | str) -> np.dtype | None:
    """The numpy dtype of a TF DataType (number or name like ``"DT_FLOAT"``); None for strings or unknown types."""
    if isinstance(enum, str):
        enum = _DT[enum].number if enum in _DT else -1
    entry = _FROM_ENUM.get(enum)
    return entry[0] if entry else None


def type_name(enum: int) -> str:
    return _NAMES.get(enum, str(enum))


def make_tensor_proto(array: Any) -> Any:
    """An ndarray as a TensorProto, values in ``tensor_content`` like ``tf.io.serialize_tensor`` writes them."""
    arr = np.asarray(array)
    proto = TensorProto()
    proto.tensor_shape.dim.extend(TensorShapeProto.Dim(size=d) for d in arr.shape)
    if arr.dtype.kind in "OSU":
        proto.dtype = DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.reshape(-1))
        return proto
    proto.dtype = enum_of(arr.dtype)
    proto.tensor_content = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
    return proto


def make_ndarray(proto: Any, budget: DecodeBudget | None = None) -> np.ndarray:
    """A TensorProto as an ndarray: from ``tensor_content`` or the typed ``*_val`` fields (a single value is
    broadcast, as TensorFlow does). ``budget``: the declared shape's bytes are charged to it before anything is
    allocated, so a tiny message cannot ask for a huge broadcast."""
    if proto.tensor_shape.unknown_rank and not proto.tensor_shape.dim:
        raise InputError("the TensorProto has an unknown rank; send its shape")
    shape = check_shape([d.size for d in proto.tensor_shape.dim], "TensorProto")
    if proto.dtype == DT_STRING:
        values = proto.string_val
        if len(values) != declared_bytes(shape, 1):
            raise InputError(f"TensorProto holds {len(values)} strings but its shape {list(shape)} needs "
                             f"{declared_bytes(shape, 1)}")
        if budget is not None:
            budget.take(sum(len(v) for v in values) + 8 * len(values), f"a DT_STRING TensorProto {list(shape)}")
        return np.array(list(values), dtype=object).reshape(shape)
    entry = _FROM_ENUM.get(proto.dtype)
    if entry is None:
        raise InputError(f"TensorProto dtype {type_name(proto.dtype)} is not supported; send a numeric tensor")
    dtype, field = entry
    size = declared_bytes(shape, 1)
    if budget is not None:
        budget.take(size * dtype.itemsize, f"a TensorProto of shape {list(shape)} ({type_name(proto.dtype)})")
    if proto.tensor_content:
        if len(proto.tensor_content) != size * dtype.itemsize:
            raise InputError(f"TensorProto holds {len(proto.tensor_content) // dtype.itemsize} values but its shape "
                             f"{list(shape)} needs {size}")
        arr = np.frombuffer(proto.tensor_content, dtype=dtype.newbyteorder("<"))
        return arr.astype(dtype, copy=False).reshape(shape)
    values = getattr(proto, field)
    if len(values) not in (0, 1, size):
        raise InputError(f"TensorProto holds {len(values)} values but its shape {list(shape)} needs {size}")
    if field == "half_val":
        arr = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif field == "int_val" and len(values):
        arr = fit_dtype(np.asarray(values, dtype=np.int64), dtype, f"TensorProto {type_name(proto.dtype)}")
    else:
        arr = np.asarray(values, dtype=dtype)
    if arr.size == size:
        return arr.reshape(shape)
    return np.full(shape, arr[0] if arr.size else 0, dtype=dtype)
