"""TensorFlow Lite (``.tflite``) behind the runtime contract, through LiteRT (``ai-edge-litert``), without TensorFlow.

Install with ``pip install 'tilecast[tflite]'``. When LiteRT is missing, ``tflite_runtime`` or a full TensorFlow
(``tf.lite.Interpreter``) is used if present, so TensorFlow users need nothing more. Models with signatures (what
``tf.lite.TFLiteConverter`` writes) are called through their signature runner, so inputs and outputs keep their
Keras/SavedModel names; the batch dimension is resized to each batch. Quantized inputs and outputs are
(de)quantized here, so the engine sends and receives float32 as for any other model.
"""

from __future__ import annotations

import importlib
import os
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import MissingExtraError, ModelLoadError, SpecError, TileSizeError
from .base import BaseRuntime, RuntimeRecipe, Signature, TensorSpec, rejected_batch

__all__ = ["TFLiteRuntime", "interpreter_class"]

_INTERPRETERS = (("ai_edge_litert.interpreter", "LiteRT"), ("tflite_runtime.interpreter", "tflite_runtime"),
                 ("tensorflow.lite.python.interpreter", "TensorFlow"))


def interpreter_class() -> tuple[Any, str]:
    """LiteRT's ``Interpreter``, else ``tflite_runtime``'s, else TensorFlow's; with the name of the one found."""
    for module, label in _INTERPRETERS:
        try:
            return importlib.import_module(module).Interpreter, label
        except (ImportError, AttributeError):
            continue
    raise MissingExtraError(
        "running a .tflite model needs LiteRT ('ai-edge-litert'), which is not installed. Install it with: "
        "pip install 'tilecast[tflite]'"
    )


def _quantized(detail: Mapping[str, Any]) -> tuple[float, int] | None:
    scale, zero = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zero)) if scale and np.issubdtype(np.dtype(detail["dtype"]), np.integer) else None


def _spec(name: str, detail: Mapping[str, Any]) -> TensorSpec:
    shape = detail.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = detail["shape"]
    dims = tuple(None if int(d) < 0 else int(d) for d in shape)
    dims = (None, *dims[1:]) if dims else dims  # the batch is resized to each call's
    dtype = np.dtype(np.float32) if _quantized(detail) else np.dtype(detail["dtype"])
    return TensorSpec(name, dims, dtype)


class TFLiteRuntime(BaseRuntime):
    """A ``.tflite`` model. ``threads``: the interpreter's CPU threads; ``signature_name``: which signature to call
    (default: the first). Calls are serialised (one interpreter holds one set of tensors)."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None,
                 signature_name: str | None = None) -> None:
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model file not found: {p}; check the path")
        self.path = str(p)
        self.threads = threads
        Interpreter, self.backend = interpreter_class()
        try:
            with warnings.catch_warnings():  # TensorFlow's own interpreter warns that it is deprecated for LiteRT
                warnings.filterwarnings("ignore", r".*tf\.lite\.Interpreter is deprecated", UserWarning)
                self.interpreter = Interpreter(model_path=self.path, num_threads=threads)
            signatures = self.interpreter.get_signature_list()
        except Exception as exc:
            raise ModelLoadError(
                f"{self.backend} could not load {self.path}: {type(exc).__name__}: {str(exc)[:300]}. Is it a complete "
                ".tflite file? Convert the model with tf.lite.TFLiteConverter."
            ) from None
        self._lock = threading.Lock()
        if signature_name is not None and signature_name not in signatures:
            raise SpecError(f"{self.path} has no signature {signature_name!r}; it has {sorted(signatures)}")
        self.signature_name = signature_name or next(iter(signatures), None)
        if self.signature_name is not None:
            self._runner = self.interpreter.get_signature_runner(self.signature_name)
            ins = dict(self._runner.get_input_details())
            outs = dict(self._runner.get_output_details())
        else:  # a model without signatures: its tensors by name
            self._runner = None
            self.interpreter.allocate_tensors()
            ins = {d["name"]: d for d in self.interpreter.get_input_details()}
            outs = {d["name"]: d for d in self.interpreter.get_output_details()}
        self._ins, self._outs = ins, outs
        self.signature = Signature(tuple(_spec(n, d) for n, d in ins.items()),
                                   tuple(_spec(n, d) for n, d in outs.items()))

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self._ins if n not in batch]
        if missing:
            raise TileSizeError(f"the batch has no input {missing}; the model takes {list(self._ins)}")
        feed = {n: self._to_model(np.asarray(batch[n]), d) for n, d in self._ins.items()}
        try:
            with self._lock:
                raw = self._call(feed)
        except Exception as exc:
            raise rejected_batch(f"TensorFlow Lite ({self.backend})", batch, exc) from None
        return {n: self._from_model(raw[n], d) for n, d in self._outs.items()}

    def _call(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._runner is not None:
            return {k: np.array(v, copy=True) for k, v in self._runner(**feed).items()}
        it = self.interpreter
        current = {d["index"]: tuple(d["shape"]) for d in it.get_input_details()}
        for name, value in feed.items():
            index = self._ins[name]["index"]
            if current[index] != value.shape:
                it.resize_tensor_input(index, value.shape)
        it.allocate_tensors()
        for name, value in feed.items():
            it.set_tensor(self._ins[name]["index"], value)
        it.invoke()
        return {n: np.array(it.get_tensor(d["index"]), copy=True) for n, d in self._outs.items()}

    @staticmethod
    def _to_model(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
        dtype = np.dtype(detail["dtype"])
        q = _quantized(detail)
        if q is not None:
            info = np.iinfo(dtype)
            x = np.clip(np.round(x.astype(np.float32) / q[0] + q[1]), info.min, info.max)
        return np.ascontiguousarray(x, dtype=dtype)

    @staticmethod
    def _from_model(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
        q = _quantized(detail)
        return (x.astype(np.float32) - q[1]) * np.float32(q[0]) if q is not None else x

    def recipe(self) -> RuntimeRecipe | None:
        return TFLiteRuntime, (self.path,), {"threads": self.threads, "signature_name": self.signature_name}

    def close(self) -> None:
        self._runner = None
        self.interpreter = None

    def __repr__(self) -> str:
        return f"TFLiteRuntime({self.path}, {self.backend}, signature={self.signature_name})"
