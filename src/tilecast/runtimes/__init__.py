"""Runtimes: where models run. Each implements :class:`~tilecast.runtimes.base.Runtime`."""

from .base import Runtime, Signature, TensorSpec
from .callable import CallableRuntime
from .onnx import OnnxRuntime

__all__ = ["CallableRuntime", "OnnxRuntime", "Runtime", "Signature", "TensorSpec"]
