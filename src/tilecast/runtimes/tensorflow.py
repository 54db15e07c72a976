"""TensorFlow behind the runtime contract: SavedModel directories and Keras ``.keras`` files.

A SavedModel prepared for Earth Engine (``earthengine model prepare``) takes and returns strings: each instance is a
web-safe base64 serialized ``TensorProto``. String-typed inputs and outputs are encoded and decoded here, so such a
model runs locally exactly as Vertex AI would run it. Install with ``pip install 'tilecast[tf]'``.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ModelLoadError, OutputShapeError, TileSizeError
from .base import BaseRuntime, Signature, TensorSpec, rejected_batch

__all__ = ["TensorFlowRuntime"]


def _tf_spec(name: str, spec: Any) -> TensorSpec:
    if spec.dtype.name == "string":
        # Earth Engine's prepared models: serialized tensors of any shape; the engine sends float32 arrays.
        return TensorSpec(name, None, None)
    shape = None if spec.shape.rank is None else tuple(d if d is not None else None for d in spec.shape.as_list())
    return TensorSpec(name, shape, np.dtype(spec.dtype.as_numpy_dtype))


class TensorFlowRuntime(BaseRuntime):
    """Run a SavedModel signature (``serving_default`` unless ``signature_name``) or a Keras model."""

    def __init__(self, path: str | os.PathLike, *, signature_name: str | None = None) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # TensorFlow otherwise reserves every GPU's whole memory at import, which leaves none for a PyTorch or
        # ONNX Runtime model in the same process (a user's setting wins; none has effect once TF is imported).
        os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
        tf = require("tensorflow", "tf")
        self._tf = tf
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model not found: {p}; check the path")
        self.path = str(p)
        self.metadata: dict[str, str] = {}
        self.kind = "savedmodel" if p.is_dir() else "keras"
        self.signature_name: str | None = None
        """The SavedModel signature served (``tilecast serve`` accepts requests naming it)."""
        try:
            if self.kind == "savedmodel":
                self._loaded = tf.saved_model.load(self.path)
                sigs = self._loaded.signatures
                name = signature_name or ("serving_default" if "serving_default" in sigs else next(iter(sigs), None))
                if name is None:
                    raise ModelLoadError(f"SavedModel {p} has no signatures; export it with a serving signature")
                if name not in sigs:
                    raise ModelLoadError(f"SavedModel {p} has no signature {name!r}; it has {sorted(sigs)}")
                self._fn = sigs[name]
                self.signature_name = name
                _, kwargs = self._fn.structured_input_signature
                self._encoded = {k: tuple(v.shape.as_list()) for k, v in kwargs.items() if v.dtype.name == "string"}
                inputs = tuple(_tf_spec(k, v) for k, v in kwargs.items())
                outputs = tuple(_tf_spec(k, v) for k, v in self._fn.structured_outputs.items())
            else:
                keras = require("keras", "tf")
                self._model = keras.saving.load_model(self.path, compile=False)
                self._encoded = {}
                out_names = list(getattr(self._model, "output_names", None) or [])
                inputs = tuple(
                    TensorSpec(_keras_name(t), tuple(t.shape), np.dtype(_np_dtype(t.dtype)))
                    for t in self._model.inputs
                )
                if len(out_names) != len(self._model.outputs):
                    out_names = ["output"] if len(self._model.outputs) == 1 else [
                        f"output_{i}" for i in range(len(self._model.outputs))]
                outputs = tuple(
                    TensorSpec(n, tuple(t.shape), np.dtype(_np_dtype(t.dtype)))
                    for n, t in zip(out_names, self._model.outputs, strict=True)
                )
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(
                f"TensorFlow could not load {p}: {type(exc).__name__}: {str(exc)[:300]}. Give a SavedModel "
                "directory (with saved_model.pb) or a .keras file saved by model.save()"
            ) from None
        self.signature = Signature(inputs, outputs)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tf = self._tf
        feed = {}
        for t in self.signature.inputs:
            if t.name not in batch:
                raise TileSizeError(f"the batch has no input {t.name!r}; the model takes {self.signature.input_names}")
            value = np.asarray(batch[t.name])
            if t.name in self._encoded and value.dtype != object:
                value = _encode(tf, value, self._encoded[t.name])
            feed[t.name] = tf.convert_to_tensor(value)
        try:
            if self.kind == "savedmodel":
                result = self._fn(**feed)
            else:
                args = feed if len(feed) > 1 else next(iter(feed.values()))
                result = self._model(args, training=False)
        except Exception as exc:
            raise rejected_batch("TensorFlow", batch, exc) from None
        if not isinstance(result, Mapping):
            items = result if isinstance(result, (list, tuple)) else [result]
            result = dict(zip(self.signature.output_names, items, strict=True))
        elif self.kind == "keras":
            result = dict(zip(self.signature.output_names, result.values(), strict=True))
        out = {}
        for k, v in result.items():
            arr = v.numpy() if hasattr(v, "numpy") else np.asarray(v)
            if arr.dtype == object:
                arr = _decode(tf, arr, k)
            out[k] = arr
        return out

    def close(self) -> None:
        self._fn = None
        self._model = None

    def __repr__(self) -> str:
        return f"TensorFlowRuntime({self.path}, {self.kind})"


def _keras_name(t: Any, default: str = "input") -> str:
    name = getattr(t, "name", None) or default
    return name.split(":")[0]


def _np_dtype(dtype: Any) -> Any:
    return getattr(dtype, "as_numpy_dtype", None) or str(dtype)


def _encode(tf: Any, value: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    """Earth Engine's prepared models: one web-safe base64 serialized TensorProto per instance."""
    value = np.ascontiguousarray(value, dtype=np.float32) if value.dtype.kind == "f" else value
    if len(shape) == 0:
        return np.array(base64.urlsafe_b64encode(tf.make_tensor_proto(value).SerializeToString()), dtype=object)
    return np.array(
        [base64.urlsafe_b64encode(tf.make_tensor_proto(v).SerializeToString()) for v in value], dtype=object
    )


def _decode(tf: Any, arr: np.ndarray, name: str) -> np.ndarray:
    from tensorflow.core.framework import tensor_pb2

    def one(b: bytes) -> np.ndarray:
        raw = b
        with contextlib.suppress(ValueError, TypeError):
            raw = base64.urlsafe_b64decode(b)
        proto = tensor_pb2.TensorProto()
        try:
            proto.ParseFromString(raw)
        except Exception:
            raise OutputShapeError(f"output {name!r} is a string that is not a serialized TensorProto") from None
        return tf.make_ndarray(proto)

    if arr.ndim == 0:
        return one(arr.item())
    return np.stack([one(b) for b in arr.reshape(-1)]).reshape(*arr.shape, *one(arr.reshape(-1)[0]).shape)
