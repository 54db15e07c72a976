"""Small ONNX graphs built in the tests, so every expected value can be computed independently with numpy."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(graph: onnx.GraphProto, path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def mean_conv(path, bands: int = 1, k: int = 5, hw: tuple = ("H", "W"), padding: bool = True,
              batch="N") -> str:
    """NCHW k x k mean of the band sum, as a float32 (N, 1, H, W) output. ``padding`` keeps the size."""
    w = np.full((1, bands, k, k), 1.0 / (k * k), dtype=np.float32)
    pads = [k // 2] * 4 if padding else [0, 0, 0, 0]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, bands, *hw])
    y = helper.make_tensor_value_info("mean", TensorProto.FLOAT, None)
    node = helper.make_node("Conv", ["image", "w"], ["mean"], kernel_shape=[k, k], pads=pads)
    graph = helper.make_graph([node], "mean_conv", [x], [y], [numpy_helper.from_array(w, "w")])
    return _save(graph, path)


def linear_1x1(path, weights, bias=0.0, layout: str = "NCHW", name_in: str = "x", name_out: str = "y") -> str:
    """Per-pixel y = sum_c w_c * x_c + b, stacked layout."""
    weights = np.asarray(weights, dtype=np.float32)
    c = len(weights)
    w = weights.reshape(1, c, 1, 1)
    shape = ["N", c, "H", "W"] if layout == "NCHW" else ["N", "H", "W", c]
    x = helper.make_tensor_value_info(name_in, TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info(name_out, TensorProto.FLOAT, None)
    nodes = []
    src = name_in
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [name_in], ["xt"], perm=[0, 3, 1, 2]))
        src = "xt"
    nodes.append(helper.make_node("Conv", [src, "w", "b"], ["yc"], kernel_shape=[1, 1]))
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["yc"], [name_out], perm=[0, 2, 3, 1]))
    else:
        nodes.append(helper.make_node("Identity", ["yc"], [name_out]))
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([bias], np.float32), "b")]
    return _save(helper.make_graph(nodes, "linear", [x], [y], inits), path)


def per_band_sum(path, names, weights) -> str:
    """Earth Engine layout: one (N, H, W, 1) input per band; output (N, H, W, 1) weighted sum."""
    inputs, nodes, inits = [], [], []
    acc = None
    for i, (name, wv) in enumerate(zip(names, weights, strict=True)):
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", "H", "W", 1]))
        inits.append(numpy_helper.from_array(np.array(wv, np.float32), f"w{i}"))
        nodes.append(helper.make_node("Mul", [name, f"w{i}"], [f"m{i}"]))
        if acc is None:
            acc = f"m{i}"
        else:
            nodes.append(helper.make_node("Add", [acc, f"m{i}"], [f"a{i}"]))
            acc = f"a{i}"
    nodes.append(helper.make_node("Identity", [acc], ["output"]))
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, None)
    return _save(helper.make_graph(nodes, "per_band", inputs, [out], inits), path)


def avgpool(path, bands: int, factor: int) -> str:
    """2x (or factor x) downsampling by averaging: NCHW in, NCHW out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[factor, factor], strides=[factor, factor])
    return _save(helper.make_graph([node], "pool", [x], [y]), path)


def upsample(path, bands: int, factor: int) -> str:
    """Nearest-neighbour upsampling by ``factor``: NCHW in, NCHW out."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    scales = numpy_helper.from_array(np.array([1, 1, factor, factor], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")
    return _save(helper.make_graph([node], "up", [x], [y], [scales]), path)


def argmax_classes(path, bands: int) -> str:
    """(N, C, H, W) -> int64 (N, H, W) argmax over bands: a classifier."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("classes", TensorProto.INT64, None)
    node = helper.make_node("ArgMax", ["x"], ["classes"], axis=1, keepdims=0)
    return _save(helper.make_graph([node], "argmax", [x], [y]), path)
