"""Output decoders: a detector's tensors for a batch of tiles into objects in tile pixel coordinates.

Pixel coordinates are those of the model's input tensor (the tile with its halo): ``x`` to the right, ``y`` down,
``(0, 0)`` the top-left corner of the top-left pixel. Each decoder drops candidates under the confidence
threshold, runs class-aware non-maximum suppression inside the tile (raw YOLO heads propose every object many
times) and clips boxes to the tile, so that no tile reports an object beyond what it saw.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import DetectorOutputError
from .metadata import DetectorSpec

__all__ = ["Detections", "Mask", "decode_batch", "nms"]

Mask = tuple[np.ndarray, int, int]
"""An instance mask: a boolean array cut to the object's box, and the ``(row, col)`` of its top-left pixel."""


@dataclass
class Detections:
    """The objects of one tile: ``boxes`` ``(n, 4)`` as ``x1, y1, x2, y2``; ``angles`` (radians, clockwise in
    pixel space) for oriented boxes, whose ``rboxes`` ``(n, 4)`` are ``cx, cy, w, h``; ``masks`` for instances."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    rboxes: np.ndarray | None = None
    angles: np.ndarray | None = None
    masks: list[Mask] | None = None
    valid: np.ndarray | None = None
    """The tile's input mask over its view (set by :func:`~tilecast.vectors.tiles.detect_tiles`); None: all valid."""

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> Detections:
        masks = None if self.masks is None else [self.masks[i] for i in idx]
        return Detections(self.boxes[idx], self.scores[idx], self.classes[idx],
                          None if self.rboxes is None else self.rboxes[idx],
                          None if self.angles is None else self.angles[idx], masks, self.valid)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0, np.float32), np.zeros(0, np.int32))


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    """Indices kept by greedy, class-aware non-maximum suppression (IoU above ``threshold`` suppresses), best first.

    Up to :data:`PAIRWISE` candidates, the IoU of every pair is computed at once and the greedy pass visits only the
    boxes that overlap another: objects that no other candidate overlaps (most of a sparse scene) cost no Python step.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    shift = (classes.astype(np.float64) * (np.abs(boxes).max() * 2 + 1))[:, None]
    b = boxes + shift  # boxes of different classes never overlap
    order = np.argsort(-scores, kind="stable")
    if len(b) <= PAIRWISE:
        return _nms_pairwise(b[order], threshold, order)
    x1, y1, x2, y2 = b.T
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= threshold]
    return np.asarray(keep, np.int64)


PAIRWISE = 2048
"""Up to this many candidates per tile, non-maximum suppression computes the IoU of all pairs at once."""


def _overlapping_pairs(x1: np.ndarray, x2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair ``(i, j)`` whose x ranges overlap by more than nothing, by a sweep over the boxes sorted by x1:
    the pairs are few in a sparse scene, where comparing all pairs costs the square of the candidates."""
    by_x = np.argsort(x1, kind="stable")
    xs = x1[by_x]
    stop = np.searchsorted(xs, x2[by_x], side="left")  # the boxes starting before this one ends
    first = np.arange(len(xs)) + 1
    counts = np.maximum(stop - first, 0)
    if not counts.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.repeat(np.arange(len(xs)), counts)
    b = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(first, counts)
    return by_x[a], by_x[b]


def _nms_pairwise(b: np.ndarray, threshold: float, order: np.ndarray) -> np.ndarray:
    """NMS over boxes already sorted best first; ``order`` maps them back to the caller's indices.

    The IoU test runs on the pairs whose x ranges overlap (the only ones that can overlap at all), and the greedy
    pass visits only the boxes that overlap another: objects no other candidate overlaps cost no Python step.
    """
    x1, y1, x2, y2 = (b[:, k].astype(np.float32) for k in range(4))
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    i, j = _overlapping_pairs(x1, x2)
    w = np.maximum(np.float32(0.0), np.minimum(x2[i], x2[j]) - np.maximum(x1[i], x1[j]))
    h = np.maximum(np.float32(0.0), np.minimum(y2[i], y2[j]) - np.maximum(y1[i], y1[j]))
    inter = w * h
    over = inter > threshold * np.maximum(areas[i] + areas[j] - inter, 1e-12)
    lo, hi = np.minimum(i[over], j[over]), np.maximum(i[over], j[over])
    if lo.size == 0:
        return order
    by_lo = np.argsort(lo, kind="stable")
    lo, hi = lo[by_lo], hi[by_lo]
    alive = np.ones(len(b), bool)
    for k in np.unique(np.concatenate([lo, hi])):  # best first
        if alive[k]:
            alive[hi[np.searchsorted(lo, k, "left"): np.searchsorted(lo, k, "right")]] = False
    return order[alive]


def _xyxy(b: np.ndarray, fmt: str) -> np.ndarray:
    if fmt == "xyxy":
        return b.astype(np.float64)
    cx, cy, w, h = b.astype(np.float64).T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _select(spec: DetectorSpec, rows: np.ndarray, scores: np.ndarray, classes: np.ndarray,
            hw: tuple[int, int], fmt: str = "xywh") -> tuple[np.ndarray, np.ndarray]:
    """Candidates above the threshold, of the wanted classes, capped by score; returns (indices, xyxy boxes)."""
    ok = scores >= spec.confidence
    if spec.classes is not None:
        ok &= np.isin(classes, spec.classes)
    idx = np.flatnonzero(ok)
    if idx.size > spec.max_candidates:
        idx = idx[np.argsort(-scores[idx], kind="stable")[: spec.max_candidates]]
    boxes = _xyxy(rows[idx, :4], fmt)
    h, w = hw
    np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
    np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
    real = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # False for NaN, and for no extent in the tile
    if not real.all():
        idx, boxes = idx[real], boxes[real]
    keep = nms(boxes, scores[idx], classes[idx], spec.iou)
    return idx[keep], boxes[keep]


def _one(outputs: Mapping[str, np.ndarray], det_type: str, shape: str) -> np.ndarray:
    if not outputs:
        raise DetectorOutputError(f"the model returned no outputs; det_type {det_type!r} expects {shape}")
    arr = np.asarray(next(iter(outputs.values())))
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim == 4 and det_type in ("yolo_v8", "yolo_obb"):  # a dense head: one anchor per output pixel
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
    if arr.ndim != 3:
        raise DetectorOutputError(
            f"det_type {det_type!r} expects one output of shape {shape}, got {tuple(arr.shape)}; check det_type "
            "(tilecast info MODEL shows the outputs)"
        )
    return arr


def _check_batch(arr: np.ndarray, n: int, det_type: str) -> None:
    if arr.shape[0] != n:
        raise DetectorOutputError(
            f"det_type {det_type!r}: the output has {arr.shape[0]} tile(s) on its first axis for a batch of {n}; "
            "if the model takes one tile per call, set batch_size=1 (--batch-size 1)"
        )


def _yolo_rows(outputs: Mapping[str, np.ndarray], n: int, spec: DetectorSpec, channels_first: bool,
               extra: int, shape: str) -> np.ndarray:
    """``(N, anchors, channels)`` from a YOLO head, whichever way round the model wrote it."""
    arr = _one(outputs, spec.det_type, shape)
    _check_batch(arr, n, spec.det_type)
    if channels_first and arr.shape[1] > arr.shape[2] >= 5 + extra:  # written as (N, anchors, channels)
        channels_first = False
    if channels_first:
        arr = arr.transpose(0, 2, 1)
    if arr.shape[2] < 5 + extra:
        raise DetectorOutputError(
            f"det_type {spec.det_type!r} expects {shape} with at least {5 + extra} values per anchor, got "
            f"{tuple(arr.shape)}"
        )
    return arr


def _decode_yolo(outputs: Mapping[str, np.ndarray], spec: DetectorSpec, n: int,
                 hw: tuple[int, int]) -> list[Detections]:
    t = spec.det_type
    if t == "yolo_v8":
        rows = _yolo_rows(outputs, n, spec, True, -1, "(N, 4+C, anchors)")
    elif t == "generic":
        rows = _yolo_rows(outputs, n, spec, False, 0 if spec.objectness else -1, "(N, anchors, 4+1+C)")
    else:
        rows = _yolo_rows(outputs, n, spec, False, 0, "(N, anchors, 5+C)")
    with_obj = t in ("yolo_v5", "yolo_v6") or (t == "generic" and spec.objectness)
    first = 5 if with_obj else 4
    fmt = spec.box_format if t == "generic" else "xywh"
    out = []
    for r in rows:
        cls_scores = r[:, first:]
        classes = cls_scores.argmax(axis=1).astype(np.int32)
        scores = cls_scores[np.arange(len(r)), classes]
        if with_obj and t != "yolo_v6":
            scores = scores * r[:, 4]
        idx, boxes = _select(spec, r, scores, classes, hw, fmt)
        out.append(Detections(boxes, scores[idx].astype(np.float32), classes[idx]))
    return out


def _decode_obb(outputs: Mapping[str, np.ndarray], spec: DetectorSpec, n: int,
                hw: tuple[int, int]) -> list[Detections]:
    rows = _yolo_rows(outputs, n, spec, True, 1, "(N, 4+C+1, anchors), the angle last")
    out = []
    for r in rows:
        cls_scores = r[:, 4:-1]
        classes = cls_scores.argmax(axis=1).astype(np.int32)
        scores = cls_scores[np.arange(len(r)), classes]
        ok = scores >= spec.confidence
        if spec.classes is not None:
            ok &= np.isin(classes, spec.classes)
        idx = np.flatnonzero(ok)
        if idx.size > spec.max_candidates:  # the best-scoring ones, as _select keeps
            idx = np.sort(idx[np.argsort(-scores[idx], kind="stable")[: spec.max_candidates]])
        rb = r[idx, :4].astype(np.float64)
        ang = r[idx, -1].astype(np.float64)
        corners = obb_corners(rb, ang)
        boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
        keep = _nms_polygons(corners, scores[idx], classes[idx], spec.iou)
        boxes = boxes[keep]
        h, w = hw
        np.clip(boxes[:, 0::2], 0, w, out=boxes[:, 0::2])
        np.clip(boxes[:, 1::2], 0, h, out=boxes[:, 1::2])
        sel = idx[keep]
        out.append(Detections(boxes, scores[sel].astype(np.float32), classes[sel], rb[keep], ang[keep]))
    return out


def obb_corners(rboxes: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``(n, 4, 2)`` corners of oriented boxes ``cx, cy, w, h`` turned by ``angles`` (radians)."""
    cx, cy, w, h = (rboxes[:, i][:, None] for i in range(4))
    c, s = np.cos(angles)[:, None], np.sin(angles)[:, None]
    dx = np.array([-0.5, 0.5, 0.5, -0.5])[None] * w
    dy = np.array([-0.5, -0.5, 0.5, 0.5])[None] * h
    return np.stack([cx + dx * c - dy * s, cy + dx * s + dy * c], axis=2)


def _nms_polygons(corners: np.ndarray, scores: np.ndarray, classes: np.ndarray, threshold: float) -> np.ndarray:
    import shapely

    polys = shapely.polygons(corners)
    alive = np.ones(len(polys), bool)
    keep: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not alive[i]:
            continue
        keep.append(int(i))
        alive[i] = False
        rest = np.flatnonzero(alive & (classes == classes[i]))
        if rest.size:
            inter = shapely.area(shapely.intersection(polys[i], polys[rest]))
            union = shapely.area(polys[i]) + shapely.area(polys[rest]) - inter
            alive[rest[inter / np.maximum(union, 1e-12) > threshold]] = False
    return np.asarray(keep, np.int64)


def _decode_seg(outputs: Mapping[str, np.ndarray], spec: DetectorSpec, n: int,
                hw: tuple[int, int]) -> list[Detections]:
    shape = "(N, 4+C+M, anchors) and prototypes (N, M, mask_h, mask_w)"
    arrays = [np.asarray(v) for v in outputs.values()]
    protos = next((a for a in arrays if a.ndim == 4), None)
    dets = next((a for a in arrays if a.ndim == 3), None)
    if protos is None or dets is None:
        raise DetectorOutputError(f"det_type 'yolo_seg' expects {shape}, got {[tuple(a.shape) for a in arrays]}")
    _check_batch(dets, n, "yolo_seg")
    m = protos.shape[1]
    rows = dets if dets.shape[1] > dets.shape[2] >= 5 + m else dets.transpose(0, 2, 1)
    if rows.shape[2] < 5 + m:
        raise DetectorOutputError(f"det_type 'yolo_seg' expects {shape} with 4+C+{m} values, got {tuple(dets.shape)}")
    out = []
    for r, proto in zip(rows, protos, strict=True):
        cls_scores = r[:, 4: r.shape[1] - m]
        classes = cls_scores.argmax(axis=1).astype(np.int32)
        scores = cls_scores[np.arange(len(r)), classes]
        idx, boxes = _select(spec, r, scores, classes, hw)
        coef = r[idx, r.shape[1] - m:].astype(np.float32)
        probs = 1.0 / (1.0 + np.exp(-(coef @ proto.reshape(m, -1).astype(np.float32))))
        probs = probs.reshape(len(idx), *proto.shape[1:])
        masks = [_crop_mask(_resize(p, hw), b, spec.mask_threshold) for p, b in zip(probs, boxes, strict=True)]
        out.append(Detections(boxes, scores[idx].astype(np.float32), classes[idx], masks=masks))
    return out


def _resize(p: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a prototype mask to the tile (pixel centres to pixel centres)."""
    h, w = hw
    rows = np.minimum(((np.arange(h) + 0.5) * p.shape[0] / h).astype(np.int64), p.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * p.shape[1] / w).astype(np.int64), p.shape[1] - 1)
    return p[rows[:, None], cols[None, :]]


def _crop_mask(prob: np.ndarray, box: np.ndarray, threshold: float) -> Mask:
    x1, y1 = int(np.floor(box[0])), int(np.floor(box[1]))
    x2, y2 = int(np.ceil(box[2])), int(np.ceil(box[3]))
    return prob[y1:y2, x1:x2] >= threshold, y1, x1


def _named(outputs: Mapping[str, np.ndarray], word: str, index: int) -> np.ndarray | None:
    for k, v in outputs.items():
        if word in k.lower():
            return np.asarray(v)
    values = list(outputs.values())
    return np.asarray(values[index]) if index < len(values) else None


def _decode_torchvision(outputs: Mapping[str, np.ndarray], spec: DetectorSpec, n: int,
                        hw: tuple[int, int]) -> list[Detections]:
    shape = "boxes (K, 4) x1, y1, x2, y2, labels (K,), scores (K,) [, masks (K, 1, H, W)], optionally batched"
    boxes, labels, scores = (_named(outputs, w, i) for w, i in (("box", 0), ("label", 1), ("score", 2)))
    masks = _named(outputs, "mask", 3)
    if boxes is None or labels is None or scores is None or boxes.shape[-1:] != (4,):
        raise DetectorOutputError(f"det_type 'torchvision' expects {shape}, got "
                                  f"{ {k: tuple(np.shape(v)) for k, v in outputs.items()} }")
    if boxes.ndim == 2:
        boxes, labels, scores = boxes[None], labels[None], scores[None]
        masks = None if masks is None else masks[None]
    _check_batch(boxes, n, "torchvision")
    out = []
    for i in range(n):
        lab = labels[i].astype(np.int32)
        sc = scores[i].astype(np.float32)
        idx, bx = _select(spec, boxes[i], sc, lab, hw, "xyxy")
        mk = None
        if masks is not None:
            mk = [_crop_mask(np.asarray(masks[i][j]).reshape(hw), b, spec.mask_threshold)
                  for j, b in zip(idx, bx, strict=True)]
        out.append(Detections(bx, sc[idx], lab[idx], masks=mk))
    return out


_DECODERS: dict[str, Callable[[Mapping[str, np.ndarray], DetectorSpec, int, tuple[int, int]], list[Detections]]] = {
    "yolo_v5": _decode_yolo,
    "yolo_v6": _decode_yolo,
    "yolo_v8": _decode_yolo,
    "generic": _decode_yolo,
    "yolo_obb": _decode_obb,
    "yolo_seg": _decode_seg,
    "torchvision": _decode_torchvision,
}


def decode_batch(
    outputs: Mapping[str, np.ndarray], spec: DetectorSpec, n: int, hw: Sequence[int]
) -> list[Detections]:
    """Objects per tile for a batch of ``n`` tiles of ``hw`` = ``(height, width)`` input pixels."""
    if n == 0:
        return []
    return _DECODERS[spec.det_type](outputs, spec, n, (int(hw[0]), int(hw[1])))
