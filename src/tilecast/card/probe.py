"""Prove a card: run one synthetic tile through the carded model, check its outputs, measure the receptive field.

Not re-exported by :mod:`tilecast.card` (it runs a :class:`~tilecast.model.Model`, which itself holds cards): import it
as ``tilecast.card.probe``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import OutputShapeError, TilecastWarning
from ..model import Model
from ..runtimes.scaled import ScaledRuntime
from ..tensors import bind_inputs, bind_outputs
from .schema import Card
from .validate import check_card_signature

__all__ = ["check_with_tile", "receptive_radius", "record_result_shapes"]


def record_result_shapes(card_obj: Card, outputs: dict[str, tuple[tuple[int, ...], str]]) -> None:
    """MLM's result shape is what the model returns (batch as -1), as measured on the synthetic tile."""
    extras = card_obj.properties.get("tilecast:outputs", {})
    layout = card_obj.properties.get("tilecast:layout")
    for out in card_obj.outputs:
        src = extras.get(out["name"], {}).get("source", out["name"])
        if src not in outputs and len(outputs) == 1:
            src = next(iter(outputs))
        if src not in outputs:
            continue
        shape, _ = outputs[src]
        if layout == "pixels":
            out["result"]["shape"] = [-1, *shape[1:]]
            out["result"]["dim_order"] = ["batch", "channel"][:len(shape)]
            continue
        dims = {4: ["batch", "channel", "height", "width"] if layout == "NCHW" else
                ["batch", "height", "width", "channel"], 3: ["batch", "height", "width"], 2: ["batch", "channel"],
                1: ["batch"]}.get(len(shape))
        if dims is None:
            continue
        out["result"]["shape"] = [-1, *shape[1:]]
        out["result"]["dim_order"] = dims



def _synthetic(card_obj: Card, bands: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Values in each band's raw range as far as the card's scaling tells it (else 0..1)."""
    cp = card_obj.to_params()
    chains = next(iter(cp.scaling.values()), []) if cp.scaling else []
    out = np.empty((bands, h, w), np.float32)
    for c in range(bands):
        s = chains[0 if len(chains) == 1 else c] if chains and (len(chains) == 1 or c < len(chains)) else None
        lo, hi = 0.0, 1.0
        if s is not None:
            if s.type in ("min-max", "clip"):
                lo, hi = s.minimum, s.maximum
            elif s.type == "z-score":
                lo, hi = s.mean - 2 * s.stddev, s.mean + 2 * s.stddev
            elif s.type == "scale":
                lo, hi = 0.0, float(s.value)
        lo, hi = sorted((lo, hi))  # a negative stddev (or scale) reverses them
        out[c] = rng.uniform(lo, hi, (h, w))
    return out


def check_with_tile(model_path: str, card_obj: Card) -> dict[str, Any]:
    """Run one synthetic tile through the carded model; check outputs; estimate the receptive field.

    Raises :class:`OutputShapeError` when what the model returns contradicts the declared outputs. Returns the
    measured radius (input pixels; None when the probe was inconclusive) and human-readable lines.
    """
    model = Model.load(model_path, card=card_obj)
    try:
        check_card_signature(card_obj, model.runtime.signature)
        spec = model.spec
        g = spec.geometry
        names = [str(b) for b in card_obj.band_names()]
        binding = bind_inputs(spec, model.runtime.signature, names, np.dtype("float32"), {})
        rng = np.random.default_rng(0)
        tile = _synthetic(card_obj, len(names), g.padded.y, g.padded.x, rng)
        batch = binding.pack([tile])
        out = model.runtime.run(batch)
        ob = bind_outputs(spec, model.runtime.signature, binding.layout, probe=out)
        arr, padded = ob.unpack(out, 1, g)
        lines = [f"checked one {g.padded.x} x {g.padded.y} tile: outputs "
                 + ", ".join(f"{k} {tuple(np.asarray(v).shape)} {np.asarray(v).dtype}" for k, v in out.items())]
        for band, (src, _) in zip(ob.bands, ob.sources, strict=True):
            got = np.asarray(out[src]).dtype
            if band.dtype.kind in "iub" and got.kind == "f":
                warnings.warn(
                    f"output {band.name!r} is declared {band.dtype} but the model returns {got}; values are cast "
                    "(use --argmax for class scores, or declare a float dtype)", TilecastWarning, stacklevel=2)
                lines.append(f"warning: output {band.name!r} declared {band.dtype}, model returns {got}")
        # Receptive field: perturb the centre pixel of the raw (un-reduced) scores.
        probe_rt = model.runtime
        if isinstance(probe_rt, ScaledRuntime) and probe_rt.argmax:
            probe_rt = ScaledRuntime(probe_rt.runtime, probe_rt.scaling, probe_rt.channel_axis)
        radius = 0 if binding.layout == "pixels" else receptive_radius(probe_rt, binding, tile, g,
                                                                       padded_hint=padded)
        overlap = min(g.overlap)
        if binding.layout == "pixels":
            lines.append("per-pixel (tabular) model: no receptive field, no overlap needed")
        elif radius is None:
            lines.append("receptive field: the centre pixel did not change any output (inconclusive)")
        else:
            lines.append(f"receptive field: about {radius} px from the centre pixel; overlap {overlap} px per edge")
            if overlap < radius:
                msg = (f"overlap {overlap} px is smaller than the measured receptive-field radius {radius} px: "
                       f"tile seams may show; use --overlap {radius} (or more)")
                warnings.warn(msg, TilecastWarning, stacklevel=2)
                lines.append("warning: " + msg)
        shapes = {k: (tuple(np.asarray(v).shape), str(np.asarray(v).dtype)) for k, v in out.items()}
        return {"radius": radius, "lines": lines, "shape": tuple(arr.shape), "outputs": shapes,
                "sources": {b.name: src for b, (src, _) in zip(ob.bands, ob.sources, strict=True)}}
    except OutputShapeError as exc:
        raise OutputShapeError(f"the card's declared outputs do not fit what the model returns: {exc}") from None
    finally:
        model.close()


def receptive_radius(runtime: Any, binding: Any, tile: np.ndarray, g: Any, padded_hint: bool = True) -> int | None:
    """How far (Chebyshev, input pixels) one perturbed centre pixel changes the model's outputs."""
    cy, cx = tile.shape[1] // 2, tile.shape[2] // 2
    base = runtime.run(binding.pack([tile]))
    bumped = tile.copy()
    spread = float(np.nanstd(tile)) or 1.0
    bumped[:, cy, cx] += 10 * spread
    moved = runtime.run(binding.pack([bumped]))
    radius = None
    for k, a in base.items():
        a, b = np.asarray(a, np.float64), np.asarray(moved[k], np.float64)
        if a.ndim != 4:
            continue
        diff = np.abs(a - b)
        # channel axis: whichever is not spatial
        if a.shape[2:] in ((tile.shape[1], tile.shape[2]), (g.out.y, g.out.x)) or a.shape[1] < a.shape[3]:
            changed = diff.max(axis=1)[0]
        else:
            changed = diff.max(axis=3)[0]
        tol = 1e-5 * (np.abs(a).max() + 1.0)
        ys, xs = np.nonzero(changed > tol)
        if len(ys) == 0:
            continue
        oh, ow = changed.shape
        sy, sx = tile.shape[1] / oh, tile.shape[2] / ow
        if (oh, ow) != (tile.shape[1], tile.shape[2]) and (oh, ow) == (g.out.y, g.out.x) and sy == 1:
            ys, xs = ys + g.overlap.y, xs + g.overlap.x
            sy = sx = 1
        r = int(np.ceil(max(np.abs((ys + 0.5) * sy - (cy + 0.5)).max(), np.abs((xs + 0.5) * sx - (cx + 0.5)).max())))
        radius = max(radius or 0, r)
    return radius
