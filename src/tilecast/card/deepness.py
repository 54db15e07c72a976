"""Models published for Deepness or GeoDeep carry their own ONNX metadata keys: turn them into a card."""

from __future__ import annotations

import ast
import json
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import SpecError, TilecastWarning
from ..plan import XY, parse_size
from ..runtimes.base import Signature, TensorSpec
from ..runtimes.scaled import Scaling
from ..spec import OutputBand
from .build import CardFields, GridFields, InputFields, ModelFields, OutputFields, TileFields, build_card
from .schema import ONNX_KEY, Card

__all__ = ["DEEPNESS_KEYS", "card_from_deepness"]

DEEPNESS_KEYS = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap",
                 "standardization_mean", "standardization_std")
_TASKS = {"regressor": ("regression",), "detector": ("object-detection",), "detection": ("object-detection",),
          "superresolution": ("super-resolution",), "recognition": ("similarity-search",)}
_RGB = ["red", "green", "blue", "alpha"]


def _meta_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def card_from_deepness(metadata: Mapping[str, str], signature: Signature | None, name: str = "model") -> Card:
    """A card from the ONNX ``metadata_props`` that Deepness (and GeoDeep, which reuses them) define.

    Deepness feeds RGB(A) uint8 tiles as ``NCHW`` float32 after ``x / 255`` and, when given,
    ``(x - standardization_mean) / standardization_std``; that is one MLM z-score per band with mean and std
    multiplied by 255. ``resolution`` is in cm/px, ``tiles_overlap`` in percent of the tile, ``class_names`` a JSON
    object ``{"0": "background", ...}`` (also read: a JSON list, a Python literal, or names separated by commas).
    Segmentors return class scores, reduced here with ``argmax``.
    """
    meta = {k: _meta_value(v) for k, v in metadata.items()}
    model_type = str(meta.get("model_type", "Segmentor"))
    inp = signature.inputs[0] if signature and signature.inputs else TensorSpec("input", None, None)
    shape = inp.shape or (None, 3, None, None)
    channels = shape[1] if len(shape) == 4 and shape[1] is not None else 3
    tiles = _tiles(meta, inp, shape, name)
    bands = _RGB[:channels] if channels <= 4 else [f"b{i + 1}" for i in range(channels)]
    out_name = signature.outputs[0].name if signature and signature.outputs else "output"
    outputs = _outputs(meta, model_type, out_name, name)
    res = _number(meta, "resolution", name, None)
    gsd = res / 100.0 if res is not None else None
    card = build_card(CardFields(
        ModelFields(name=name, architecture=model_type, artifact="onnx",
                    description=f"converted from Deepness/GeoDeep metadata ({model_type})"),
        InputFields(bands=bands, layout="NCHW", input_names=[inp.name], input_dtype="float32",
                    scaling=_scaling(meta, channels, name), common_names={b: b for b in bands if b in _RGB[:3]}),
        tiles,
        outputs,
        GridFields(resolution=gsd, fix_input_proj=gsd is not None),
    ))
    card.properties["tilecast:source_metadata"] = {k: metadata[k] for k in metadata if k != ONNX_KEY}
    card.source = "deepness"
    if outputs.tasks not in (("semantic-segmentation",), ("object-detection",), ("regression",)):
        warnings.warn(
            f"Deepness/GeoDeep model_type {model_type!r}: tilecast writes the raw output tensor (a detector's "
            "objects come out of a vector output: -o objects.gpkg)", TilecastWarning, stacklevel=2,
        )
    return card


def _tiles(meta: dict[str, Any], inp: TensorSpec, shape: tuple[Any, ...], name: str) -> TileFields:
    """``tiles_size`` (else the input's fixed size) less the ``tiles_overlap`` percentage, split over both edges.

    ``tiles_size`` is read like ``--tile`` (``512``, ``"512"``, ``"512x512"``, ``[512, 512]``), since exporters write
    it in all these forms."""
    size = meta.get("tiles_size")
    if size is None and len(shape) == 4 and shape[2] is not None:
        size = shape[2]
    if size is None:
        raise SpecError(f"Deepness/GeoDeep model {name}: no tiles_size in its metadata and the input {inp.describe()}"
                        " has no fixed size; pass input_tile_size (--tile)")
    if isinstance(size, float) and size.is_integer():
        size = int(size)
    try:
        sizes = parse_size(size, "tiles_size")
    except SpecError as exc:
        raise SpecError(f"Deepness/GeoDeep model {name}: {exc}; pass input_tile_size (--tile)") from None
    pct = _number(meta, "tiles_overlap", name, 0.0)
    per_edge = XY(*(round(v * pct / 100.0 / 2) for v in sizes))
    return TileFields(input_tile_size=(sizes.x - 2 * per_edge.x, sizes.y - 2 * per_edge.y),
                      input_overlap_size=tuple(per_edge))


def _number(meta: dict[str, Any], key: str, name: str, default: float | None) -> float | None:
    """A numeric metadata value (``null`` or empty: ``default``), or a :class:`SpecError` naming the key."""
    value = meta.get(key)
    if value in (None, ""):
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise SpecError(f"Deepness/GeoDeep model {name}: {key} is {value!r}, not a number; fix the model's "
                        "metadata or give the parameter explicitly") from None


def _scaling(meta: dict[str, Any], channels: int, name: str) -> list[Scaling | None]:
    mean = meta.get("standardization_mean")
    std = meta.get("standardization_std")
    mean = [float(m) for m in (mean if isinstance(mean, list) else [mean or 0.0] * channels)]
    std = [float(s) for s in (std if isinstance(std, list) else [std or 1.0] * channels)]
    if len(mean) < channels or len(std) < channels:
        raise SpecError(f"Deepness/GeoDeep model {name}: standardization_mean/std have {len(mean)}/{len(std)} values "
                        f"for {channels} input channels")
    scaling: list[Scaling | None] = [Scaling("z-score", mean=255.0 * m, stddev=255.0 * s)
                                     for m, s in zip(mean, std, strict=False)]
    return scaling[:channels]


def _plain_class_names(raw: Any, name: str) -> Any:
    """``class_names`` that is not JSON: a Python literal (``{'0': 'background'}``, as ``str(dict)`` writes it) or
    names separated by commas (``background, road``); anything else is an error naming the key."""
    if not isinstance(raw, str):
        if raw is None or isinstance(raw, (dict, list)):
            return raw
        raise SpecError(f"Deepness/GeoDeep model {name}: class_names is {raw!r}; write it as JSON "
                        '{"0": "background", "1": "..."} or as names separated by commas')
    text = raw.strip()
    if not text:
        return None
    if text[0] in "{[":
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, (dict, list)):
            raise SpecError(f"Deepness/GeoDeep model {name}: class_names {raw!r} is neither JSON nor a list of "
                            'names; write it as {"0": "background", "1": "..."}')
        return value
    return [part.strip() for part in text.split(",")]


def _outputs(meta: dict[str, Any], model_type: str, out_name: str, name: str) -> OutputFields:
    classes_raw = _plain_class_names(meta.get("class_names"), name)
    classes: tuple[tuple[int, str], ...] | None = None
    if isinstance(classes_raw, dict):
        try:
            classes = tuple(sorted((int(k), str(v)) for k, v in classes_raw.items()))
        except ValueError:
            raise SpecError(f"Deepness/GeoDeep model {name}: class_names keys {list(classes_raw)} are not class "
                            'values; write them as {"0": "background", "1": "..."}') from None
    elif isinstance(classes_raw, list):
        classes = tuple(enumerate(str(c) for c in classes_raw))
    if model_type.lower() in ("segmentor", "segmentation"):
        return OutputFields(output_bands=[OutputBand("class", np.dtype("uint8"), 0, classes or None)],
                            output_names=[out_name], argmax={"class": 1}, tasks=("semantic-segmentation",))
    return OutputFields(output_bands=[OutputBand(out_name, np.dtype("float32"), 1)], output_names=[out_name],
                        argmax={}, tasks=_TASKS.get(model_type.lower(), ("regression",)))
