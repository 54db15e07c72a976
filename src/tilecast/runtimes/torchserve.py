"""TorchServe model archives (``.mar``), the format Vertex AI's PyTorch guides package models in.

An archive made by ``torch-model-archiver`` is a zip holding the model (TorchScript, or ONNX), a handler and
``MAR-INF/MANIFEST.json``. tilecast runs the model with :class:`~tilecast.runtimes.torch.TorchRuntime` (or
:class:`~tilecast.runtimes.onnx.OnnxRuntime`) and applies the handler's pre-processing of pixel values:

* TorchServe's standard image handlers (``image_classifier``, ``image_segmenter``: ``ToTensor`` then ImageNet's
  ``Normalize``; ``object_detector``: ``ToTensor``), and ``base_handler`` (none);
* a custom handler file that derives from one of them, read (never executed) for the ``image_processing`` it
  declares (``ToTensor``, ``Normalize`` with literal values; ``Resize``/``CenterCrop`` are left out: tiles arrive at
  the model's size).

Any other handler (its own ``preprocess``, other transforms) is refused with a clear error: its Python code is not
run. ``ToTensor`` divides 8-bit image values by 255, so a raster whose values are not 0..255 needs a card's
``value_scaling`` to bring it there first. The handler's post-processing (e.g. top-k labels) is for JSON answers and
is not applied: the model's output tensors are returned.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError, TileSizeError
from .base import BaseRuntime, Runtime, RuntimeRecipe, Signature, TensorSpec, metadata_of
from .scaled import ScaledRuntime, Scaling

__all__ = ["MANIFEST", "STANDARD_HANDLERS", "Preprocessing", "TorchServeRuntime", "handler_preprocessing",
           "is_archive", "read_manifest"]

MANIFEST = "MAR-INF/MANIFEST.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """What a handler does to pixel values before the model: divide by ``divide`` (``ToTensor`` on 8-bit images),
    then subtract ``mean`` and divide by ``std`` per channel (``Normalize``)."""

    handler: str
    divide: float | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @property
    def channels(self) -> int | None:
        return len(self.mean) if self.mean is not None else None

    def scalings(self) -> list[Scaling] | None:
        """The same arithmetic as MLM value scalings (one per channel, or one for all): ``(x/d - m)/s`` is a
        z-score with mean ``m*d`` and stddev ``s*d``."""
        d = self.divide or 1.0
        if self.mean is not None and self.std is not None:
            return [Scaling("z-score", mean=m * d, stddev=s * d) for m, s in zip(self.mean, self.std, strict=True)]
        if self.divide:
            return [Scaling("scale", value=self.divide)]
        return None

    def describe(self) -> str:
        steps = [f"x / {self.divide:g}"] if self.divide else []
        if self.mean is not None:
            steps.append(f"(x - {list(self.mean)}) / {list(self.std or ())}")
        return f"{self.handler}: {', then '.join(steps) if steps else 'none'}"


STANDARD_HANDLERS: dict[str, Preprocessing] = {
    "image_classifier": Preprocessing("image_classifier", 255.0, IMAGENET_MEAN, IMAGENET_STD),
    "image_segmenter": Preprocessing("image_segmenter", 255.0, IMAGENET_MEAN, IMAGENET_STD),
    "object_detector": Preprocessing("object_detector", 255.0),
    "base_handler": Preprocessing("base_handler"),
}
"""TorchServe's default handlers tilecast reproduces, by name, with their pre-processing of pixel values."""

_CLASSES = {"ImageClassifier": "image_classifier", "ImageSegmenter": "image_segmenter",
            "ObjectDetector": "object_detector", "BaseHandler": "base_handler", "VisionHandler": "vision_handler"}
_GEOMETRIC = {"Resize", "CenterCrop"}


def is_archive(path: str | os.PathLike) -> bool:
    """A ``.mar`` zip, or a ``--archive-format no-archive`` directory, holding ``MAR-INF/MANIFEST.json``."""
    p = Path(path)
    if p.is_dir():
        return (p / MANIFEST).is_file()
    if not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return MANIFEST in z.namelist()


def _read_member(path: Path, name: str) -> bytes | None:
    if path.is_dir():
        member = (path / name).resolve()
        return member.read_bytes() if member.is_file() and member.is_relative_to(path.resolve()) else None
    with zipfile.ZipFile(path) as z:
        return z.read(name) if name in z.namelist() else None


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The archive's ``MAR-INF/MANIFEST.json``."""
    p = Path(path)
    try:
        raw = _read_member(p, MANIFEST)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"cannot read the TorchServe archive {p}: {exc}; is the file complete?") from None
    if raw is None:
        raise ModelLoadError(f"{p} has no {MANIFEST}: it is not a TorchServe archive; build one with "
                             "torch-model-archiver")
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ModelLoadError(f"{p}: {MANIFEST} is not valid JSON ({exc}); rebuild it with torch-model-archiver") \
            from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise ModelLoadError(f"{p}: {MANIFEST} has no 'model' section; rebuild it with torch-model-archiver")
    return manifest


def handler_preprocessing(handler: str, source: str | None = None) -> Preprocessing:
    """The pre-processing of ``handler`` (the manifest's value): a standard handler by name, or the custom handler
    file's ``source`` read for the standard handler it derives from and the ``image_processing`` it declares."""
    name = handler.split(":")[0]
    base = name.removeprefix("ts.torch_handler.")
    if base in STANDARD_HANDLERS:
        return STANDARD_HANDLERS[base]
    if source is None:
        raise ModelLoadError(
            f"the archive's handler {handler!r} is neither a standard TorchServe handler "
            f"({', '.join(STANDARD_HANDLERS)}) nor a file in the archive; rebuild it with --handler image_segmenter "
            "(or base_handler) and put the value scaling in a model card"
        )
    return _read_custom(handler, source)


def _unsupported(handler: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"the archive's custom handler {handler!r} is not supported: {why}. tilecast does not run handler code; it "
        f"reproduces the standard handlers ({', '.join(STANDARD_HANDLERS)}) and subclasses that only set "
        "image_processing (ToTensor, Normalize). Rebuild the archive with --handler image_segmenter (or base_handler) "
        "and put the value scaling in a model card (`tilecast card MODEL --scaling ...`)"
    )


def _read_custom(handler: str, source: str) -> Preprocessing:
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise _unsupported(handler, f"it does not parse ({exc.msg}, line {exc.lineno})") from None
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    derived = [(c, _CLASSES[b]) for c in classes for b in map(_last_name, c.bases) if b in _CLASSES]
    if not derived:
        raise _unsupported(handler, "it derives from none of TorchServe's handler classes")
    cls, parent = derived[-1]
    methods = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    if "preprocess" in methods:
        raise _unsupported(handler, f"class {cls.name} has its own preprocess()")
    processing = next((n.value for n in cls.body if isinstance(n, ast.Assign)
                       and any(_last_name(t) == "image_processing" for t in n.targets)), None)
    if processing is None:
        if parent == "vision_handler":
            raise _unsupported(handler, f"class {cls.name} derives from VisionHandler without image_processing")
        return STANDARD_HANDLERS[parent]
    return _read_transforms(handler, f"{cls.name}({parent})", processing)


def _read_transforms(handler: str, label: str, node: ast.expr) -> Preprocessing:
    steps = node.args[0] if isinstance(node, ast.Call) and _last_name(node.func) == "Compose" and node.args else None
    if not isinstance(steps, (ast.List, ast.Tuple)):
        raise _unsupported(handler, "image_processing is not transforms.Compose([...])")
    divide, mean, std = None, None, None
    for step in steps.elts:
        kind = _last_name(step.func) if isinstance(step, ast.Call) else None
        if kind == "ToTensor":
            divide = 255.0
        elif kind == "Normalize":
            args = dict(zip(("mean", "std"), step.args, strict=False))
            args.update({k.arg: k.value for k in step.keywords if k.arg})
            try:
                mean = tuple(float(v) for v in ast.literal_eval(args["mean"]))
                std = tuple(float(v) for v in ast.literal_eval(args["std"]))
            except (KeyError, ValueError, TypeError):
                raise _unsupported(handler, "its Normalize() has no literal mean and std") from None
            if len(mean) != len(std) or not all(std):
                raise _unsupported(handler, f"its Normalize() has mean {list(mean)} and std {list(std)}")
        elif kind not in _GEOMETRIC:
            raise _unsupported(handler, f"image_processing applies {kind or ast.unparse(step)}")
    return Preprocessing(label, divide, mean, std)


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


class TorchServeRuntime(BaseRuntime):
    """A TorchServe archive: its TorchScript (or ONNX) model behind the handler's pre-processing.

    ``device`` goes to :class:`~tilecast.runtimes.torch.TorchRuntime`; ``providers`` and ``threads`` to
    :class:`~tilecast.runtimes.onnx.OnnxRuntime` when the archive holds an ONNX model.
    """

    def __init__(self, path: str | os.PathLike, *, device: str | None = None,
                 providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        p = Path(path)
        if not p.exists():
            raise ModelLoadError(f"model not found: {p}; check the path")
        self.path = str(p)
        self._options = {"device": device, "providers": providers, "threads": threads}
        self.manifest = read_manifest(p)
        model = self.manifest["model"]
        serialized = model.get("serializedFile")
        if model.get("modelFile") or not serialized:
            raise ModelLoadError(
                f"{p} holds an eager-mode model ({model.get('modelFile') or 'no serialized file'}): tilecast runs "
                "no Python model code. Archive a TorchScript module instead: "
                "torch.jit.script(model).save('model.pt'); torch-model-archiver --serialized-file model.pt ..."
            )
        handler = str(model.get("handler") or "base_handler")
        handler_file = handler.split(":")[0]
        source = _read_member(p, handler_file) if handler_file.endswith(".py") else None
        self.preprocessing = handler_preprocessing(handler, source.decode() if source is not None else None)
        self._inner = _open_inner(p, serialized, device, providers, threads)
        scalings = self.preprocessing.scalings()
        self.runtime: Runtime = self._inner
        if scalings is not None:
            inputs = self._inner.signature.input_names
            self.runtime = ScaledRuntime(self._inner, {name: scalings for name in inputs}, channel_axis=1)
        # TorchScript records no shapes; a normalising handler says the channels, in NCHW order (CHW images stacked)
        channels = self.preprocessing.channels
        self._inputs = tuple(TensorSpec(t.name, (None, channels, None, None), t.dtype)
                             if channels is not None and t.shape is None else t
                             for t in self.runtime.signature.inputs)
        labels = _read_member(p, "index_to_name.json")
        self.metadata = {
            **metadata_of(self._inner),
            "torchserve:manifest": json.dumps(self.manifest, separators=(",", ":")),
            "torchserve:preprocessing": self.preprocessing.describe(),
            **({"torchserve:index_to_name": labels.decode()} if labels else {}),
        }

    @property
    def signature(self) -> Signature:  # type: ignore[override]
        return Signature(self._inputs, self.runtime.signature.outputs)

    def run(self, batch: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        want = self.preprocessing.channels
        for name, value in batch.items():
            if want is not None and (np.ndim(value) != 4 or np.shape(value)[1] != want):
                raise TileSizeError(
                    f"the archive's handler ({self.preprocessing.describe()}) normalises {want} channels in NCHW "
                    f"order, but input {name!r} has shape {tuple(np.shape(value))}; select {want} bands "
                    "(--bands) and use layout NCHW"
                )
        return self.runtime.run(batch)

    def recipe(self) -> RuntimeRecipe | None:
        return TorchServeRuntime, (self.path,), dict(self._options)

    def close(self) -> None:
        self.runtime.close()

    def __repr__(self) -> str:
        name = self.manifest["model"].get("modelName", Path(self.path).stem)
        return f"TorchServeRuntime({self.path}, model={name}, handler={self.preprocessing.handler})"


def _open_inner(path: Path, serialized: str, device: str | None, providers: Sequence[str] | None,
                threads: int | None) -> Runtime:
    """Load the archived model from a private temporary copy, removed as soon as it is loaded."""
    data = _read_member(path, serialized)
    if data is None:
        raise ModelLoadError(f"{path}: the manifest names {serialized!r}, which the archive does not hold; rebuild "
                             "it with torch-model-archiver")
    tmp = tempfile.mkdtemp(prefix="tilecast-mar-")
    try:
        target = Path(tmp) / Path(serialized).name
        target.write_bytes(data)
        if target.suffix.lower() == ".onnx":
            from .onnx import OnnxRuntime

            return OnnxRuntime(target, providers=providers, threads=threads)
        from .torch import TorchRuntime

        return TorchRuntime(target, device=device, fmt="torchscript")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
