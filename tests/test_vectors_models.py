"""Analytic detectors built as ONNX graphs (no training), and the rasters of bright squares they find exactly."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path, metadata: dict | None = None) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(path))
    return str(path)


def _corner_kernel(side: int) -> np.ndarray:
    """+1 at a square's top-left and bottom-right pixels, -1 just outside both: sums to 2 only for a whole square."""
    k = np.zeros((1, 1, side + 2, side + 2), np.float32)
    at = {(0, 0): 1, (side - 1, side - 1): 1, (0, -1): -1, (-1, 0): -1, (side - 1, side): -1, (side, side - 1): -1}
    for (dy, dx), v in at.items():
        k[0, 0, dy + 1, dx + 1] = v
    return k


def square_detector(path, side: int, view: int, classes: int = 1, layout: str = "yolo_v8",
                    metadata: dict | None = None, scale: float = 1.0) -> str:
    """A detector of ``side`` x ``side`` squares of value ``scale`` (any other pixel 0) that lie wholly inside the
    ``view`` x ``view`` input: one anchor per pixel, scoring 1 at a square's top-left corner.

    ``layout``: ``yolo_v8`` -> (N, 4+C, anchors); ``yolo_obb`` -> (N, 4+C+1, anchors), angle 0; ``yolo_v5`` ->
    (N, anchors, 5+C); ``generic_xyxy`` -> (N, anchors, 4+1+C) with corner boxes. The class of a square is 0
    (C classes, the others score 0).
    """
    a = view * view
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, view, view])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)
    yy, xx = np.mgrid[0:view, 0:view].astype(np.float32)
    if layout == "generic_xyxy":
        coords = np.stack([xx, yy, xx + side, yy + side]).reshape(1, 4, a)
    else:
        coords = np.stack([xx + side / 2, yy + side / 2, np.full_like(xx, side), np.full_like(xx, side)])
        coords = coords.reshape(1, 4, a)
    inits = [numpy_helper.from_array(_corner_kernel(side), "k"), numpy_helper.from_array(coords, "coords"),
             numpy_helper.from_array(np.array([1.0 / scale], np.float32), "inv"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
             numpy_helper.from_array(np.array([0, 1, a], np.int64), "flat")]
    nodes = [
        helper.make_node("Mul", ["image", "inv"], ["b"]),
        helper.make_node("Conv", ["b", "k"], ["s"], kernel_shape=[side + 2, side + 2], pads=[1, 1, side, side]),
        helper.make_node("Sub", ["s", "one"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["score4"]),
        helper.make_node("Reshape", ["score4", "flat"], ["score"]),
        helper.make_node("Mul", ["score", "zero"], ["z"]),
        helper.make_node("Add", ["z", "coords"], ["boxes"]),
    ]
    parts = ["boxes"] + (["score"] if layout not in ("yolo_v8", "yolo_obb") else [])  # objectness
    parts += ["score"] + ["z"] * (classes - 1) + (["z"] if layout == "yolo_obb" else [])  # the angle: 0
    nodes.append(helper.make_node("Concat", parts, ["cat"], axis=1))
    if layout in ("yolo_v8", "yolo_obb"):
        nodes.append(helper.make_node("Identity", ["cat"], ["output0"]))
    else:
        nodes.append(helper.make_node("Transpose", ["cat"], ["output0"], perm=[0, 2, 1]))
    return _save(helper.make_graph(nodes, "squares", [x], [y], inits), path, metadata)


def squares_image(h: int, w: int, corners, side: int, value: float = 1.0, dtype="float32") -> np.ndarray:
    img = np.zeros((h, w), dtype)
    for r, c in corners:
        img[r: r + side, c: c + side] = value
    return img


def scattered_corners(h: int, w: int, side: int, seams: int, n: int, seed: int = 0) -> list[tuple[int, int]]:
    """Square corners at least two pixels apart, many across the seams every ``seams`` pixels."""
    rng = np.random.default_rng(seed)
    taken = np.zeros((h, w), bool)
    out: list[tuple[int, int]] = []
    cand = [(s - side // 2 + d, int(rng.integers(0, w - side))) for s in range(seams, h, seams) for d in (-1, 0, 1)]
    cand += [(int(rng.integers(0, h - side)), s - side // 2 + d) for s in range(seams, w, seams) for d in (-2, 0, 2)]
    cand += [(s - 3, t - 4) for s in range(seams, h, seams) for t in range(seams, w, seams)]
    cand += [(int(rng.integers(0, h - side)), int(rng.integers(0, w - side))) for _ in range(4 * n)]
    for r, c in cand:
        if len(out) >= n or not (0 <= r <= h - side and 0 <= c <= w - side):
            continue
        if taken[max(r - 2, 0): r + side + 2, max(c - 2, 0): c + side + 2].any():
            continue
        taken[r: r + side, c: c + side] = True
        out.append((r, c))
    return out


def torchvision_detector(path, side: int, view: int) -> str:
    """The square detector with torchvision's outputs for one image: ``boxes`` (K, 4) x1, y1, x2, y2, ``labels``
    (K,) int64 (class 1; torchvision keeps 0 for the background) and ``scores`` (K,)."""
    a = view * view
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, view, view])
    outs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("labels", TensorProto.INT64, None),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)]
    yy, xx = np.mgrid[0:view, 0:view].astype(np.float32)
    corners = np.stack([xx, yy, xx + side, yy + side], axis=-1).reshape(a, 4)
    inits = [numpy_helper.from_array(_corner_kernel(side), "k"), numpy_helper.from_array(corners, "corners"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(np.array([0.5], np.float32), "half"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [
        helper.make_node("Conv", ["image", "k"], ["s"], kernel_shape=[side + 2, side + 2], pads=[1, 1, side, side]),
        helper.make_node("Sub", ["s", "one"], ["s1"]),
        helper.make_node("Relu", ["s1"], ["score4"]),
        helper.make_node("Reshape", ["score4", "flat"], ["score"]),
        helper.make_node("Greater", ["score", "half"], ["hit"]),
        helper.make_node("NonZero", ["hit"], ["nz"]),
        helper.make_node("Reshape", ["nz", "flat"], ["idx"]),
        helper.make_node("Gather", ["corners", "idx"], ["boxes"], axis=0),
        helper.make_node("Gather", ["score", "idx"], ["scores"], axis=0),
        helper.make_node("Cast", ["scores"], ["labels"], to=TensorProto.INT64),
    ]
    return _save(helper.make_graph(nodes, "torchvision_squares", [x], outs, inits), path)
