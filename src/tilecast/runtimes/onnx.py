"""ONNX Runtime, the embedded default."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError, SpecError, TileSizeError
from ..resources import Resources
from .base import BaseRuntime, Signature, TensorSpec

__all__ = ["OnnxRuntime"]

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(uint16)": np.uint16,
    "tensor(int16)": np.int16,
    "tensor(uint32)": np.uint32,
    "tensor(int32)": np.int32,
    "tensor(uint64)": np.uint64,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def _spec(arg) -> TensorSpec:  # onnxruntime.NodeArg
    shape = None if arg.shape is None else tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
    dtype = _ORT_DTYPES.get(arg.type)
    return TensorSpec(arg.name, shape, np.dtype(dtype) if dtype is not None else None)


class OnnxRuntime(BaseRuntime):
    """An ``onnxruntime.InferenceSession`` behind the runtime contract.

    ``providers`` picks execution providers (``"cuda"``, ``"openvino"``, ``"cpu"`` or full ORT names); unavailable
    ones are skipped so the same call works on a CPU-only machine. ``threads``: CPU threads for the model in all, by
    default the resource policy's ``model_threads`` (an explicit, affinity-aware count, so ONNX Runtime does not
    pin them). ``streams``: how many calls runners keep in flight at once, each with ``threads // streams`` intra-op
    threads (ONNX Runtime sessions run concurrent calls safely); by default
    :meth:`~tilecast.resources.Resources.streams_for` on the CPU, one on an accelerator. ``resources``: the policy
    those defaults come from (:meth:`Resources.detect() <tilecast.resources.Resources.detect>` when None).
    """

    releases_inputs = True
    """Once ``run`` returns, ONNX Runtime holds no reference to the batch and its outputs are copies (an Identity
    graph included), so a runner may stack the next batch into the same arrays."""

    def __init__(
        self,
        model: str | os.PathLike | bytes,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        streams: int | None = None,
        resources: Resources | None = None,
    ) -> None:
        import onnxruntime as ort

        if not isinstance(model, bytes):
            path = Path(model)
            if not path.exists():
                raise ModelLoadError(f"model file not found: {path}; check the path")
            self.path: str | None = str(path)
        else:
            self.path = None
        chosen = _providers(ort, providers)
        policy = resources or Resources.detect()
        threads = threads or policy.model_threads
        if streams is None:
            streams = policy.streams_for(threads) if chosen == ["CPUExecutionProvider"] else 1
        if streams < 1:
            raise SpecError(f"streams must be at least 1, got {streams}")
        self.streams = streams
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = max(1, threads // streams)
        opts.log_severity_level = 3
        # Spinning intra-op threads would take the cores that tilecast's reads and writes need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(self.path or model, sess_options=opts, providers=chosen)
        except Exception as exc:
            raise ModelLoadError(
                f"ONNX Runtime could not load {self.path or 'the model bytes'}: {exc}. "
                "Is it a valid .onnx file? Re-export the model, or check the file is complete."
            ) from None
        self.signature = Signature(
            tuple(_spec(a) for a in self.session.get_inputs()),
            tuple(_spec(a) for a in self.session.get_outputs()),
        )
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self.session.run(None, dict(batch))
        except Exception as exc:
            shapes = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in batch.items())
            expected = "; ".join(t.describe() for t in self.signature.inputs)
            raise TileSizeError(
                f"the model rejected the batch ({shapes}); it expects {expected}. "
                f"Match --tile/--overlap (and the layout and dtype) to the model's input. ONNX Runtime said: {exc}"
            ) from None
        return dict(zip(self.signature.output_names, values, strict=True))

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"OnnxRuntime({self.path or '<bytes>'}, providers={self.session.get_providers()}, streams={self.streams})"
        )


def _providers(ort, wanted: Sequence[str] | None) -> list[str]:
    available = ort.get_available_providers()
    if not wanted:
        return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    aliases = {"cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider",
               "openvino": "OpenVINOExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
               "coreml": "CoreMLExecutionProvider", "dml": "DmlExecutionProvider"}
    chosen = [aliases.get(p.lower(), p) for p in wanted]
    chosen = [p for p in chosen if p in available]
    return chosen or ["CPUExecutionProvider"]
