"""The two benchmark models, built with ``onnx.helper`` and deterministic random weights (no downloads).

``onnx`` is imported by the builders only: ``gpu_check.py`` takes the weights on GPU machines that lack it.

Both take one NCHW float32 input ``x`` with a dynamic batch, height and width, and return one float32 channel of
the same height and width ('same' padding), so tilecast crops or blends the padded output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["COMPUTE_LAYERS", "INPUT_SCALE", "build_argmax", "build_compute_bound", "build_io_bound", "compute_layers",
           "fcn_weights", "macs_per_pixel"]

COMPUTE_LAYERS: tuple[tuple[int, int, int], ...] = ((4, 32, 3), (32, 32, 3), (32, 32, 3), (32, 32, 3), (32, 1, 1))
"""``(in_channels, out_channels, kernel)`` of the compute-bound network's convolutions."""

INPUT_SCALE = 1e-4
"""The compute-bound network's first step: uint16 reflectances times this keep activations in a sane range."""


def compute_layers(bands: int = 4) -> tuple[tuple[int, int, int], ...]:
    """:data:`COMPUTE_LAYERS` with the first convolution taking ``bands`` channels."""
    return ((bands, *COMPUTE_LAYERS[0][1:]), *COMPUTE_LAYERS[1:])


def fcn_weights(seed: int = 0, bands: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(weight (out, in, k, k), bias (out,))`` of each of :func:`compute_layers`' convolutions: He-normal weights
    and small biases, drawn in that order from one generator. Every twin of the network (ONNX here, TorchScript in
    ``gpu_check.py``) is built from these, so their outputs can be compared."""
    rng = np.random.default_rng(seed)
    out = []
    for cin, cout, k in compute_layers(bands):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        out.append((w, b))
    return out


def macs_per_pixel(layers: tuple[tuple[int, int, int], ...] = COMPUTE_LAYERS) -> int:
    """Multiply-adds per output pixel of a stride-1 fully-convolutional stack."""
    return sum(cin * cout * k * k for cin, cout, k in layers)


def _save(nodes: list, inits: list, bands: int, name: str, path: str | Path) -> Path:
    import onnx
    from onnx import TensorProto, helper
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

    Inputs are uint16 reflectances cast to float, multiplied by :data:`INPUT_SCALE` first.
    """
    from onnx import helper, numpy_helper
    nodes = [helper.make_node("Mul", ["x", "scale"], ["h0"])]
    inits = [numpy_helper.from_array(np.array(INPUT_SCALE, np.float32), "scale")]
    src = "h0"
    weights = fcn_weights(seed, bands)
    for i, ((w, b), (_, _, k)) in enumerate(zip(weights, compute_layers(bands), strict=True)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(weights) - 1
        conv = "y" if last else f"c{i}"
        nodes.append(helper.make_node("Conv", [src, f"w{i}", f"b{i}"], [conv], kernel_shape=[k, k],
                                      pads=[k // 2] * 4))
        if not last:
            nodes.append(helper.make_node("Relu", [conv], [f"r{i}"]))
            src = f"r{i}"
    return _save(nodes, inits, bands, "compute_bound", path)


def build_io_bound(path: str | Path, bands: int = 4, seed: int = 1) -> Path:
    """A per-pixel 1x1 convolution (a linear index of the bands): a few MACs per pixel."""
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((1, bands, 1, 1)) * 1e-4).astype(np.float32)
    b = np.array([0.5], np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    return _save(nodes, inits, bands, "io_bound", path)


def build_argmax(path: str | Path, bands: int = 4, classes: int = 4, seed: int = 2) -> Path:
    """An almost free classifier: a 1x1 convolution ``bands`` -> ``classes`` and an argmax over the classes, cast
    to uint8 (a few MACs per pixel). With it nearly all of a run is tilecast's own pipeline: reading, packing,
    assembling, casting, the overviews and the COG."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, bands, 1, 1)) * 1e-4).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["logits"], kernel_shape=[1, 1]),
        helper.make_node("ArgMax", ["logits"], ["index"], axis=1, keepdims=1),
        helper.make_node("Cast", ["index"], ["y"], to=TensorProto.UINT8),
    ]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", bands, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.UINT8, ["N", 1, "H", "W"])
    model = helper.make_model(helper.make_graph(nodes, "argmax", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)
