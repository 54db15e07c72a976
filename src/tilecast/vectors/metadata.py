"""A detector's decoding parameters, from Deepness/GeoDeep ONNX metadata, the model card, or the caller.

Deepness and GeoDeep publish detectors with ``metadata_props``: ``model_type`` ("Detector"), ``det_type`` (the output
layout), ``class_names``, ``det_conf``, ``det_iou_thresh``, ``tiles_size``, ``tiles_overlap`` and ``resolution``.
Reading them into a :class:`DetectorSpec` lets their model zoos run unchanged. A card may say the same under
``tilecast:detector`` (e.g. ``{"det_type": "generic", "box_format": "xyxy", "objectness": false}``), and flags
(``confidence``, ``iou``, class names) override both. Precedence: flags, then the card, then the ONNX metadata.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from .errors import DetectorSpecError

__all__ = [
    "CARD_KEY",
    "DET_TYPES",
    "DetectorSpec",
    "describe_detector",
    "detector_from_metadata",
    "detector_spec",
    "format_detector",
    "parse_det_type",
]

CARD_KEY = "tilecast:detector"
"""The card property that declares a detector's decoding parameters."""

DET_TYPES: dict[str, str] = {
    "yolo_v5": "YOLO v5/v7: (N, anchors, 5+C) = cx, cy, w, h, objectness, class scores",
    "yolo_v6": "YOLO v6: (N, anchors, 5+C), objectness ignored",
    "yolo_v8": "YOLO v8/v9/11 (Ultralytics): (N, 4+C, anchors) = cx, cy, w, h, class scores; or a dense head "
               "(N, 4+C, h, w) with one anchor per pixel",
    "yolo_obb": "YOLO oriented boxes (Ultralytics): (N, 4+C+1, anchors), the angle (radians) last",
    "yolo_seg": "YOLO segmentation (Ultralytics): (N, 4+C+M, anchors) and prototypes (N, M, h, w)",
    "torchvision": "boxes (x1, y1, x2, y2), scores, labels, optional masks (K, 1, H, W), as torchvision's detectors",
    "generic": "(N, anchors, 4+1+C): box, objectness, class scores (box_format and objectness from the card)",
}
"""The output layouts tilecast decodes, by canonical name."""

_ALIASES = {
    "yolo_v5_or_v7_default": "yolo_v5", "yolov5": "yolo_v5", "yolo_v7": "yolo_v5", "yolov7": "yolo_v5",
    "yolov6": "yolo_v6",
    "yolo_ultralytics": "yolo_v8", "yolov8": "yolo_v8", "yolo_v9": "yolo_v8", "yolov9": "yolo_v8",
    "yolo_v11": "yolo_v8", "yolo11": "yolo_v8", "ultralytics": "yolo_v8",
    "yolo_ultralytics_obb": "yolo_obb", "yolov8_obb": "yolo_obb", "obb": "yolo_obb",
    "yolo_ultralytics_segmentation": "yolo_seg", "yolov8_seg": "yolo_seg",
    "retinanet": "torchvision", "faster_rcnn": "torchvision", "mask_rcnn": "torchvision", "fcos": "torchvision",
    "ssd": "torchvision", "boxes_scores_labels": "torchvision",
}


def parse_det_type(value: str) -> str:
    """The canonical name of a ``det_type`` (Deepness's ``YOLO_Ultralytics`` is ``yolo_v8``)."""
    key = str(value).strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in DET_TYPES:
        known = ", ".join(DET_TYPES)
        raise DetectorSpecError(
            f"unknown det_type {value!r}; tilecast decodes {known} (and Deepness's YOLO_v5_or_v7_default, YOLO_v6, "
            "YOLO_Ultralytics, YOLO_Ultralytics_obb, YOLO_Ultralytics_segmentation). Set det_type in the model "
            "card's tilecast:detector, or pass det_type="
        )
    return key


@dataclass(frozen=True)
class DetectorSpec:
    """How to turn a detector's output tensors into objects, and how to merge them across tiles."""

    det_type: str
    class_names: Mapping[int, str] = field(default_factory=dict)
    confidence: float = 0.25
    """Objects scoring below this are dropped (Deepness's ``det_conf``)."""
    iou: float = 0.45
    """Non-maximum suppression threshold inside a tile (``det_iou_thresh``)."""
    merge_threshold: float = 0.5
    """Two copies of an object seen by neighbouring tiles are one object when ``match`` reaches this, measured
    inside the pixels both tiles see."""
    match: Literal["ios", "iou"] = "ios"
    """``ios``: intersection over the smaller object (merges a cut-off copy); ``iou``: intersection over union."""
    box_format: Literal["xywh", "xyxy"] = "xywh"
    """For ``generic``: centre and size, or corners."""
    objectness: bool = True
    """For ``generic``: whether a score of objectness precedes the class scores."""
    mask_threshold: float = 0.5
    max_candidates: int = 30000
    """Candidates per tile kept (by score) before non-maximum suppression, as Ultralytics does."""
    classes: tuple[int, ...] | None = None
    """Keep only these class ids."""
    tiles_size: int | None = None
    tiles_overlap: float | None = None
    resolution: float | None = None
    """The ground sampling distance the model was trained at, in cm/px (Deepness's unit)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "det_type", parse_det_type(self.det_type))
        for name in ("confidence", "iou", "merge_threshold", "mask_threshold"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise DetectorSpecError(f"{name} must be between 0 and 1, got {v!r}")
        if self.match not in ("ios", "iou"):
            raise DetectorSpecError(f"match must be 'ios' or 'iou', got {self.match!r}")
        if self.box_format not in ("xywh", "xyxy"):
            raise DetectorSpecError(f"box_format must be 'xywh' or 'xyxy', got {self.box_format!r}")

    def class_name(self, class_id: int) -> str:
        return self.class_names.get(int(class_id), str(int(class_id)))

    def with_overrides(self, **changes: Any) -> DetectorSpec:
        """A copy with the given (not None) fields replaced."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


_FIELDS = {f.name for f in fields(DetectorSpec)}


def _value(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _class_names(raw: Any) -> dict[int, str]:
    raw = _value(raw)
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        try:
            return {int(k): str(v) for k, v in raw.items()}
        except ValueError:
            raise DetectorSpecError(f"class_names keys must be class ids, got {list(raw)[:5]}") from None
    if isinstance(raw, (list, tuple)):
        return {i: str(v) for i, v in enumerate(raw)}
    raise DetectorSpecError(f"class_names must be a JSON object {{id: name}} or a list, got {raw!r}")


def detector_from_metadata(metadata: Mapping[str, Any]) -> DetectorSpec | None:
    """The spec that Deepness/GeoDeep keys describe, or None when the metadata is not a detector's."""
    meta = {k: _value(v) for k, v in metadata.items()}
    model_type = str(meta.get("model_type", "")).lower()
    if model_type not in ("detector", "detection") and "det_type" not in meta:
        return None
    params: dict[str, Any] = {"det_type": meta.get("det_type", "YOLO_v5_or_v7_default")}
    params["class_names"] = _class_names(meta.get("class_names"))
    for key, name in (("det_conf", "confidence"), ("det_iou_thresh", "iou")):
        if meta.get(key) not in (None, ""):
            params[name] = float(meta[key])
    for key, cast in (("tiles_size", int), ("tiles_overlap", float), ("resolution", float)):
        if meta.get(key) not in (None, ""):
            try:
                params[key] = cast(meta[key])
            except (TypeError, ValueError):
                raise DetectorSpecError(f"metadata {key}={meta[key]!r} is not a number") from None
    return DetectorSpec(**params)


def _from_card(props: Mapping[str, Any], base: DetectorSpec | None) -> DetectorSpec | None:
    declared = props.get(CARD_KEY)
    if declared is None:
        return base
    if not isinstance(declared, Mapping):
        raise DetectorSpecError(f"the card's {CARD_KEY} must be an object, e.g. {{\"det_type\": \"yolo_v8\"}}")
    unknown = sorted(set(declared) - _FIELDS)
    if unknown:
        raise DetectorSpecError(f"the card's {CARD_KEY} has unknown fields {unknown}; known: {sorted(_FIELDS)}")
    params = dict(declared)
    if "class_names" in params:
        params["class_names"] = _class_names(params["class_names"])
    if "classes" in params and params["classes"] is not None:
        params["classes"] = tuple(int(c) for c in params["classes"])
    if base is None:
        if "det_type" not in params:
            raise DetectorSpecError(f"the card's {CARD_KEY} needs a det_type, one of {list(DET_TYPES)}")
        return DetectorSpec(**params)
    return base.with_overrides(**params)


def detector_spec(
    metadata: Mapping[str, Any] | None = None,
    card_properties: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> DetectorSpec | None:
    """Merge the ONNX metadata, the card's ``tilecast:detector`` and the caller's ``overrides`` (None ignored).

    ``overrides`` may carry ``det_type`` to make any model a detector; None when nothing says it is one.
    """
    spec = detector_from_metadata(metadata or {})
    props = dict(card_properties or {})
    if spec is None and "tilecast:source_metadata" in props:  # a card converted from Deepness keys
        spec = detector_from_metadata(props["tilecast:source_metadata"])
    spec = _from_card(props, spec)
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - _FIELDS)
    if unknown:
        raise DetectorSpecError(f"unknown detector parameters {unknown}; known: {sorted(_FIELDS)}")
    if "class_names" in given:
        given["class_names"] = _class_names(given["class_names"])
    if "classes" in given:
        given["classes"] = tuple(int(c) for c in given["classes"])
    if spec is None:
        return DetectorSpec(**given) if "det_type" in given else None
    return spec.with_overrides(**given)


def describe_detector(spec: DetectorSpec) -> dict[str, Any]:
    """What ``tilecast info model.onnx`` shows for a detector: how its outputs are decoded and merged."""
    out: dict[str, Any] = {
        "det_type": f"{spec.det_type} ({DET_TYPES[spec.det_type]})",
        "confidence": spec.confidence,
        "iou (within a tile)": spec.iou,
        "merge across tiles": f"{spec.match} >= {spec.merge_threshold}",
    }
    if spec.det_type == "generic":
        out["box_format"] = spec.box_format
        out["objectness"] = spec.objectness
    if spec.det_type in ("yolo_seg", "torchvision"):
        out["mask_threshold"] = spec.mask_threshold
    if spec.class_names:
        out["classes"] = ", ".join(f"{k}={v}" for k, v in sorted(spec.class_names.items()))
    if spec.classes is not None:
        out["keep classes"] = list(spec.classes)
    for key in ("tiles_size", "tiles_overlap", "resolution"):
        if getattr(spec, key) is not None:
            out[key] = getattr(spec, key)
    return out


def format_detector(spec: DetectorSpec) -> str:
    """One line for ``tilecast info``: ``det_type`` and every decoding parameter, as ``key=value``."""
    info = describe_detector(spec)
    head = info.pop("det_type")
    return head + "; " + "; ".join(f"{k}: {v}" for k, v in info.items())
