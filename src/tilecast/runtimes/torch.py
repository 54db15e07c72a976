"""PyTorch behind the runtime contract: TorchScript (``torch.jit.save``) and ``torch.export`` programs (``.pt2``).

The GPU is used when one is available (``device=None``); inputs are moved there per batch and outputs come back as
numpy. Install with ``pip install 'tilecast[torch]'``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._extras import require
from ..errors import ModelLoadError, TileSizeError
from .base import BaseRuntime, Signature, TensorSpec, rejected_batch

__all__ = ["CARD_FILE", "TorchRuntime", "embed_card"]

CARD_FILE = "mlm:item"
"""The extra file, inside a TorchScript or torch.export archive, that holds the model card (JSON)."""


class TorchRuntime(BaseRuntime):
    """Run a TorchScript module or an exported program.

    ``fmt``: ``"torchscript"`` or ``"torch.export"`` (guessed from the file when None). ``inputs``/``outputs`` name
    the tensors when the model does not (TorchScript forward arguments are used; outputs default to ``output`` or
    ``output_0``...). A model returning a dict keeps its keys as output names.
    """

    def __init__(self, path: str | os.PathLike, *, device: str | None = None, fmt: str | None = None,
                 outputs: list[str] | None = None) -> None:
        torch = require("torch", "torch")
        self._torch = torch
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model file not found: {p}; check the path")
        self.path = str(p)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        fmt = fmt or ("torch.export" if p.suffix.lower() == ".pt2" else "torchscript")
        self.fmt = fmt
        self._lock = threading.Lock()
        try:
            extra = {CARD_FILE: ""}
            if fmt == "torch.export":
                program = torch.export.load(self.path, extra_files=extra)
                self.module = program.module().to(self.device)
                names = _export_input_names(program)
                in_specs = _export_input_specs(program, names)
            else:
                self.module = torch.jit.load(self.path, map_location=self.device, _extra_files=extra)
                names = _script_input_names(self.module)
                # TorchScript does not record dtypes; raster models take float32 (override with
                # input_type_override), so an integer raster is cast before it reaches the model.
                in_specs = tuple(TensorSpec(n, None, np.dtype(np.float32)) for n in names)
        except Exception as exc:
            raise ModelLoadError(
                f"PyTorch could not load {self.path} as {fmt}: {type(exc).__name__}: {str(exc)[:300]}. "
                "Is the file complete? Save TorchScript with torch.jit.save or a program with torch.export.save."
            ) from None
        if fmt != "torch.export":  # exported programs are already in inference form (eval() is refused)
            self.module.eval()
        self._out_names = outputs
        self.signature = Signature(in_specs, tuple(TensorSpec(n, None, None) for n in (outputs or ["output"])))
        card = extra.get(CARD_FILE)
        card = card.decode() if isinstance(card, bytes) else card
        self.metadata: dict[str, str] = {"mlm:item": card} if card else {}

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        names = self.signature.input_names
        try:
            args = [torch.from_numpy(np.ascontiguousarray(batch[n])).to(self.device) for n in names]
        except KeyError as exc:
            raise TileSizeError(f"the batch has no input {exc}; the model takes {names}") from None
        try:
            with self._lock, torch.inference_mode():
                result = self.module(*args)
        except Exception as exc:
            raise rejected_batch("PyTorch", batch, exc) from None
        return self._outputs(result)

    def _outputs(self, result: Any) -> dict[str, np.ndarray]:
        torch = self._torch
        if isinstance(result, torch.Tensor):
            items = [result]
        elif isinstance(result, Mapping):
            return {str(k): v.detach().cpu().numpy() for k, v in result.items()}
        else:
            items = list(result)
        names = self._out_names or (["output"] if len(items) == 1 else [f"output_{i}" for i in range(len(items))])
        if self.signature.output_names != names:
            self.signature = Signature(self.signature.inputs, tuple(TensorSpec(n, None, None) for n in names))
        return {n: t.detach().cpu().numpy() for n, t in zip(names, items, strict=True)}

    def close(self) -> None:
        self.module = None

    def __repr__(self) -> str:
        return f"TorchRuntime({self.path}, {self.fmt}, device={self.device})"


def _script_input_names(module: Any) -> list[str]:
    try:
        args = list(module.forward.schema.arguments)[1:]  # the first is the module itself
        names = [a.name for a in args]
    except Exception:
        names = []
    return names or ["input"]


def _export_input_names(program: Any) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]


def _export_input_specs(program: Any, names: list[str]) -> tuple[TensorSpec, ...]:
    specs = []
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    for name in names:
        node = placeholders.get(name)
        val = node.meta.get("val") if node is not None else None
        shape, dtype = None, None
        if val is not None and hasattr(val, "shape"):
            shape = tuple(int(d) if isinstance(d, int) else None for d in val.shape)
            dtype = np.dtype(str(val.dtype).replace("torch.", ""))
        specs.append(TensorSpec(name, shape, dtype))
    return tuple(specs)


def embed_card(path: str | os.PathLike, card_json: str, fmt: str) -> None:
    """Store the card inside the archive as an extra file (rewritten atomically), as ONNX stores it in metadata."""
    torch = require("torch", "torch")
    tmp = str(path) + ".tmp"
    try:
        if fmt == "torch.export":
            extra: dict[str, Any] = {}
            program = torch.export.load(str(path), extra_files=extra)
            torch.export.save(program, tmp, extra_files={**extra, CARD_FILE: card_json})
        else:
            module = torch.jit.load(str(path), map_location="cpu")
            torch.jit.save(module, tmp, _extra_files={CARD_FILE: card_json})
    except Exception as exc:
        raise ModelLoadError(f"cannot embed the card in {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    os.replace(tmp, path)
