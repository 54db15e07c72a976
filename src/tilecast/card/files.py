"""Model files: which format a path holds, the runtime that opens it, and where its sidecar card lives."""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ModelLoadError, SpecError
from ..runtimes.base import Runtime, metadata_of

__all__ = ["MODEL_SUFFIXES", "card_path", "detect_format", "embeddable", "open_runtime", "runtime_metadata"]

_SUFFIXES = {
    ".onnx": "onnx",
    ".pt": "torchscript",
    ".pth": "torchscript",
    ".jit": "torchscript",
    ".torchscript": "torchscript",
    ".pt2": "torch.export",
    ".keras": "keras",
    ".h5": "keras",
    ".mar": "torchserve",
    ".tflite": "tflite",
}
MODEL_SUFFIXES = tuple(_SUFFIXES)
"""The file suffixes that name a model file (a SavedModel, or an unpacked TorchServe archive, is a directory)."""


def card_path(model_path: str | os.PathLike) -> Path:
    """The sidecar next to a model: ``model.onnx`` -> ``model.onnx.json``; a directory ``m/`` -> ``m.json``."""
    return Path(str(Path(model_path)).rstrip("/\\") + ".json")


def detect_format(path: str | os.PathLike) -> str:
    """``onnx``, ``torchscript``, ``torch.export``, ``savedmodel``, ``keras``, ``torchserve`` (a ``.mar`` archive) or
    ``tflite``, from the path (and a peek inside)."""
    p = Path(path)
    if not p.exists():
        raise ModelLoadError(f"model not found: {p}; check the path")
    if p.is_dir():
        if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
            return "savedmodel"
        if (p / "MAR-INF" / "MANIFEST.json").is_file():
            return "torchserve"
        raise ModelLoadError(f"{p} is a directory without saved_model.pb or MAR-INF/MANIFEST.json; give a SavedModel "
                             "directory, an unpacked TorchServe archive or a model file")
    suffix = p.suffix.lower()
    if suffix in (".pt", ".pth") and zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        if any(n.endswith("/archive_format") or "/models/" in n for n in names) and \
                not any(n.endswith("/constants.pkl") or n.endswith("/code/") for n in names):
            return "torch.export"
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    with open(p, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    if head[:2] == b"PK":
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                if "MAR-INF/MANIFEST.json" in z.namelist():
                    return "torchserve"
        return "torchscript"
    raise ModelLoadError(
        f"cannot tell the model format of {p}; use .onnx, .pt (TorchScript), .pt2 (torch.export), .keras, "
        ".mar (TorchServe), .tflite, or a TensorFlow SavedModel directory"
    )


def embeddable(model_path: str | os.PathLike) -> str | None:
    """``onnx`` or ``torch`` when the model file can carry its card inside, else None."""
    name = str(model_path).lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".pt", ".pt2", ".pth", ".torchscript", ".jit")) and Path(model_path).is_file():
        return "torch"
    return None


def open_runtime(path: str | os.PathLike, fmt: str | None = None, *, providers: Sequence[str] | None = None,
                 device: str | None = None, threads: int | None = None, signature_name: str | None = None,
                 precision: str | None = None) -> Runtime:
    """The runtime for a model file or directory, by format. ``device`` and ``precision`` (see docs/gpu.md) apply
    to ONNX and PyTorch models."""
    fmt = fmt or detect_format(path)
    if precision not in (None, "fp32") and fmt not in ("onnx", "torchscript", "torch.export"):
        raise SpecError(f"precision {precision!r} applies to ONNX and PyTorch models, not {fmt}; leave out "
                        "--precision")
    if providers and fmt not in ("onnx", "torchserve"):
        raise SpecError(f"providers {list(providers)} are ONNX Runtime's, but this model is {fmt}; leave out "
                        "--providers (--device picks a PyTorch model's device)")
    if fmt == "onnx":
        from ..runtimes.onnx import OnnxRuntime

        return OnnxRuntime(path, providers=providers, threads=threads, device=device, precision=precision)
    if fmt in ("torchscript", "torch.export"):
        from ..runtimes.torch import TorchRuntime

        return TorchRuntime(path, device=device, fmt=fmt, precision=precision)
    if fmt in ("savedmodel", "keras"):
        from ..runtimes.tensorflow import TensorFlowRuntime

        return TensorFlowRuntime(path, signature_name=signature_name)
    if fmt == "torchserve":
        from ..runtimes.torchserve import TorchServeRuntime

        return TorchServeRuntime(path, device=device, providers=providers, threads=threads)
    if fmt == "tflite":
        from ..runtimes.tflite import TFLiteRuntime

        return TFLiteRuntime(path, threads=threads, signature_name=signature_name)
    raise ModelLoadError(f"unknown model format {fmt!r}")


def runtime_metadata(runtime: Runtime) -> Mapping[str, str]:
    """The key/value metadata a model file carries (ONNX ``metadata_props``, a Torch archive's card), else empty."""
    return metadata_of(runtime)
