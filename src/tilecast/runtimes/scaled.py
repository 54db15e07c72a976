"""Value scaling (and class reduction) as a runtime wrapper, so the engine never learns about normalisation.

A model card says how each band is scaled before the model sees it (STAC MLM ``value_scaling``: scale, offset,
z-score, min-max, clip). :class:`ScaledRuntime` applies exactly that to the named input tensors, then calls the wrapped
runtime. Optionally it reduces a class-score output to a class index (``argmax``), which is what segmentation models
published with Deepness/GeoDeep metadata expect their host to do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SpecError
from .base import BaseRuntime, Runtime, Signature, TensorSpec, one_stream_of, streams_of

__all__ = ["SCALING_TYPES", "ScaledRuntime", "Scaling", "parse_scaling"]

SCALING_TYPES = ("scale", "offset", "z-score", "min-max", "clip", "clip-min", "clip-max")


@dataclass(frozen=True)
class Scaling:
    """One MLM value-scaling step. ``apply`` maps raw values to what the model was trained on."""

    type: str
    value: float | None = None
    mean: float | None = None
    stddev: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def __post_init__(self) -> None:
        need = {
            "scale": ("value",), "offset": ("value",), "z-score": ("mean", "stddev"),
            "min-max": ("minimum", "maximum"), "clip": ("minimum", "maximum"), "clip-min": ("minimum",),
            "clip-max": ("maximum",),
        }
        if self.type not in need:
            raise SpecError(f"value scaling {self.type!r} is not supported; use one of {SCALING_TYPES}")
        missing = [k for k in need[self.type] if getattr(self, k) is None]
        if missing:
            raise SpecError(f"value scaling {self.type!r} needs {missing}")
        if self.type == "scale" and not self.value:
            raise SpecError("value scaling scale: value must be non-zero (data is divided by it)")
        if self.type == "z-score" and not self.stddev:
            raise SpecError("value scaling z-score: stddev must be non-zero")
        if self.type == "min-max" and self.maximum == self.minimum:
            raise SpecError("value scaling min-max: maximum must differ from minimum")
        if self.type == "clip" and self.minimum > self.maximum:
            raise SpecError(f"value scaling clip: minimum ({self.minimum}) must be <= maximum ({self.maximum})")

    def apply(self, x: np.ndarray) -> np.ndarray:
        t = self.type
        if t == "scale":  # MLM: data / value
            return x / self.value
        if t == "offset":  # MLM: data - value
            return x - self.value
        if t == "z-score":
            return (x - self.mean) / self.stddev
        if t == "min-max":
            return (x - self.minimum) / (self.maximum - self.minimum)
        if t == "clip":
            return np.clip(x, self.minimum, self.maximum)
        if t == "clip-min":
            return np.maximum(x, self.minimum)
        return np.minimum(x, self.maximum)

    def to_mlm(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for k in ("value", "mean", "stddev", "minimum", "maximum"):
            v = getattr(self, k)
            if v is not None:
                out[k] = float(v)
        return out

    @classmethod
    def from_mlm(cls, obj: Mapping[str, Any] | Scaling) -> Scaling:
        if isinstance(obj, Scaling):
            return obj
        if not isinstance(obj, Mapping) or "type" not in obj:
            raise SpecError(f"value scaling {obj!r}: expected an object with a 'type' (one of {SCALING_TYPES})")
        known = {k: float(obj[k]) for k in ("value", "mean", "stddev", "minimum", "maximum") if obj.get(k) is not None}
        return cls(str(obj["type"]), **known)


def parse_scaling(text: str) -> Scaling:
    """``z-score:MEAN:STD``, ``min-max:MIN:MAX``, ``scale:V``, ``offset:V``, ``clip:MIN:MAX`` (the CLI's form)."""
    parts = text.strip().split(":")
    kind, args = parts[0], parts[1:]
    try:
        nums = [float(a) for a in args]
    except ValueError:
        raise SpecError(f"scaling {text!r}: the arguments after the type must be numbers") from None
    fields = {
        "scale": ("value",), "offset": ("value",), "z-score": ("mean", "stddev"), "min-max": ("minimum", "maximum"),
        "clip": ("minimum", "maximum"), "clip-min": ("minimum",), "clip-max": ("maximum",),
    }
    if kind not in fields or len(nums) != len(fields[kind]):
        raise SpecError(
            f"scaling {text!r}: use scale:V, offset:V, z-score:MEAN:STD, min-max:MIN:MAX, clip:MIN:MAX, "
            "clip-min:MIN or clip-max:MAX"
        )
    return Scaling(kind, **dict(zip(fields[kind], nums, strict=True)))


class ScaledRuntime(BaseRuntime):
    """Apply per-band scaling to named inputs (and optionally argmax to named outputs), then run ``runtime``.

    ``scaling`` maps an input name to a list with one :class:`Scaling` (or None) per channel, or a single one for all
    channels, as MLM's ``value_scaling`` array does. ``channel_axis`` says where the channels are: ``1`` for NCHW,
    ``-1`` for NHWC and for Earth Engine's one-input-per-band layout ``(N, H, W, 1)``. Values are computed in float32
    and cast to the dtype the wrapped model declares, so a uint8 raster feeds a float model correctly.
    """

    def __init__(
        self,
        runtime: Runtime,
        scaling: Mapping[str, Sequence[Scaling | None]] | None = None,
        channel_axis: Mapping[str, int] | int = -1,
        argmax: Mapping[str, int] | None = None,
        argmax_dtype: Any = np.uint8,
    ) -> None:
        self.runtime = runtime
        self._params = (scaling, channel_axis, argmax, argmax_dtype)
        self.streams = streams_of(runtime)  # scaling is stateless, so the wrapped runtime's concurrency carries over
        self.scaling = {k: list(v) for k, v in (scaling or {}).items() if any(s is not None for s in v)}
        self.channel_axis = channel_axis
        self.argmax = dict(argmax or {})
        self.argmax_dtype = np.dtype(argmax_dtype)
        inner = runtime.signature
        unknown = [k for k in self.scaling if inner.inputs and k not in inner.input_names]
        if unknown:
            raise SpecError(
                f"value scaling is declared for inputs {unknown}, but the model's inputs are {inner.input_names}; "
                "fix the card's input names"
            )
        inputs = tuple(
            TensorSpec(t.name, t.shape, np.dtype(np.float32)) if t.name in self.scaling else t for t in inner.inputs
        )
        outputs = []
        for t in inner.outputs:
            if t.name in self.argmax:
                axis = self.argmax[t.name]
                shape = None if t.shape is None else tuple(d for i, d in enumerate(t.shape)
                                                            if i != axis % len(t.shape))
                outputs.append(TensorSpec(t.name, shape, self.argmax_dtype))
            else:
                outputs.append(t)
        # A scaled input accepts any numeric dtype: the signature says float32 so the engine sends full precision.
        self.signature = Signature(inputs, tuple(outputs))
        self._inner_dtypes = {t.name: t.dtype for t in inner.inputs}

    def _axis(self, name: str) -> int:
        return self.channel_axis if isinstance(self.channel_axis, int) else self.channel_axis.get(name, -1)

    def scale(self, name: str, x: np.ndarray) -> np.ndarray:
        chains = self.scaling.get(name)
        if not chains:
            return x
        x = np.asarray(x, dtype=np.float32)
        if len(chains) == 1:
            return x if chains[0] is None else chains[0].apply(x).astype(np.float32, copy=False)
        axis = self._axis(name)
        if x.shape[axis] != len(chains):
            raise SpecError(
                f"input {name!r} has {x.shape[axis]} channels but the card scales {len(chains)} bands; "
                "give one scaling per band (or one for all)"
            )
        out = np.empty_like(x)
        moved_in, moved_out = np.moveaxis(x, axis, 0), np.moveaxis(out, axis, 0)
        for c, step in enumerate(chains):
            moved_out[c] = moved_in[c] if step is None else step.apply(moved_in[c])
        return out

    def one_stream(self) -> Runtime:
        """The wrapped model with one stream (see :func:`~tilecast.runtimes.base.one_stream_of`), scaled the same."""
        inner = one_stream_of(self.runtime)
        return self if inner is self.runtime else ScaledRuntime(inner, *self._params)

    def run(self, batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for name, value in batch.items():
            if name in self.scaling:
                value = self.scale(name, value)
                dtype = self._inner_dtypes.get(name)
                if dtype is not None and value.dtype != dtype:
                    value = value.astype(dtype)
            feed[name] = value
        out = dict(self.runtime.run(feed))
        for name, axis in self.argmax.items():
            if name in out:
                out[name] = np.argmax(out[name], axis=axis).astype(self.argmax_dtype)
        return out

    def close(self) -> None:
        self.runtime.close()

    def __repr__(self) -> str:
        return f"ScaledRuntime({self.runtime!r}, inputs={sorted(self.scaling)}, argmax={sorted(self.argmax)})"
