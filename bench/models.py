"""The two benchmark models, built with ``onnx.helper`` and deterministic random weights (no downloads).

Both take one NCHW float32 input ``x`` with a dynamic batch, height and width, and return one float32 channel of
the same height and width ('same' padding), so tilecast crops or blends the padded output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["COMPUTE_LAYERS", "build_compute_bound", "build_io_bound", "macs_per_pixel"]

COMPUTE_LAYERS: tuple[tuple[int, int, int], ...] = ((4, 32, 3), (32, 32, 3), (32, 32, 3), (32, 32, 3), (32, 1, 1))
"""``(in_channels, out_channels, kernel)`` of the compute-bound network's convolutions."""


def macs_per_pixel(layers: tuple[tuple[int, int, int], ...] = COMPUTE_LAYERS) -> int:
    """Multiply-adds per output pixel of a stride-1 fully-convolutional stack."""
    return sum(cin * cout * k * k for cin, cout, k in layers)


def _save(nodes: list, inits: list, bands: int, name: str, path: str | Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, "H", "W"])
    model = helper.make_model(helper.make_graph(nodes, name, [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def build_compute_bound(path: str | Path, bands: int = 4, seed: int = 0) -> Path:
    """Conv 3x3 4->32, three 3x3 32->32 and a 1x1 32->1, ReLU between: about 29k MACs per pixel.

    Inputs are uint16 reflectances cast to float; a fixed 1e-4 scale keeps activations in a sane range.
    """
    rng = np.random.default_rng(seed)
    layers = ((bands, *COMPUTE_LAYERS[0][1:]), *COMPUTE_LAYERS[1:])
    nodes = [helper.make_node("Mul", ["x", "scale"], ["h0"])]
    inits = [numpy_helper.from_array(np.array(1e-4, np.float32), "scale")]
    src = "h0"
    for i, (cin, cout, k) in enumerate(layers):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(layers) - 1
        conv = "y" if last else f"c{i}"
        nodes.append(helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [conv], kernel_shape=[k, k],
                                      pads=[k // 2] * 4))
        if not last:
            nodes.append(helper.make_node("Relu", [conv], [f"r{i}"]))
            src = f"r{i}"
    return _save(nodes, inits, bands, "compute_bound", path)


def build_io_bound(path: str | Path, bands: int = 4, seed: int = 1) -> Path:
    """A per-pixel 1x1 convolution (a linear index of the bands): a few MACs per pixel."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, bands, 1, 1)) * 1e-4).astype(np.float32)
    b = np.array([0.5], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return _save(nodes, inits, bands, "io_bound", path)
