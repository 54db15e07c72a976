"""Bands to tensors and back: Earth Engine's one-tensor-per-band layout, stacked ``NHWC`` / ``NCHW``, or
``pixels`` (one row of band values per pixel, for tabular models such as scikit-learn converted to ONNX).

Binding happens once per prediction, against the runtime's signature, so shape and name errors surface before any
pixel is read. Packing and unpacking are then plain numpy on each batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BandMismatchError, InputError, OutputShapeError, SpecError, TileSizeError
from .pixels import fill_dtype
from .plan import XY, TileGeometry, infer_layout
from .runtimes.base import Signature, TensorSpec
from .spec import ModelSpec, OutputBand

__all__ = ["InputBinding", "OutputBinding", "bind_inputs", "bind_outputs"]


@dataclass(frozen=True)
class InputSlot:
    name: str
    bands: tuple[int, ...]
    """Positions in the source's band list; empty for a property input."""
    dtype: np.dtype
    array: bool = False
    """True for an array band (``(N, H, W, D)`` even when D == 1 is not declared)."""
    prop: Any = None
    prop_rank: int = 1


@dataclass(frozen=True)
class InputBinding:
    layout: str
    slots: tuple[InputSlot, ...]
    batch_size: int
    fixed_batch: bool = False
    """The model takes exactly ``batch_size`` tiles per call: shorter batches are padded with zero tiles."""

    def pack(self, tiles: Sequence[np.ndarray], reuse: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Stack ``(C, H, W)`` tiles into the model's named input tensors (``NCHW`` ones into the matching arrays of
        ``reuse``, an earlier batch the model is done with, when given)."""
        if self.fixed_batch and 0 < len(tiles) < self.batch_size:
            tiles = [*tiles, *[np.zeros_like(tiles[0])] * (self.batch_size - len(tiles))]
        n = len(tiles)
        out: dict[str, np.ndarray] = {}
        stack: np.ndarray | None = None
        for slot in self.slots:
            if not slot.bands:
                value = np.asarray(slot.prop, dtype=slot.dtype)
                out[slot.name] = np.broadcast_to(value, (n,) + (1,) * (slot.prop_rank - 1)).copy()
                continue
            if self.layout == "NCHW":  # cast while stacking: one pass, no intermediate batch in the input dtype
                into = reuse.get(slot.name) if reuse is not None else None
                if into is not None and into.shape == (n, *tiles[0].shape) and into.dtype == slot.dtype:
                    out[slot.name] = np.stack(tiles, out=into, casting="unsafe")
                else:
                    out[slot.name] = np.stack(tiles, dtype=slot.dtype, casting="unsafe")
                continue
            if stack is None:
                stack = np.stack(tiles)  # (N, C, H, W)
            if self.layout == "pixels":  # tabular models: one row of band values per pixel
                rows = stack.transpose(0, 2, 3, 1).reshape(-1, stack.shape[1])
                out[slot.name] = np.ascontiguousarray(rows, dtype=slot.dtype)
            else:
                sel = stack if self.layout == "NHWC" else stack[:, list(slot.bands)]
                out[slot.name] = np.ascontiguousarray(sel.transpose(0, 2, 3, 1), dtype=slot.dtype)
        return out


def bind_inputs(
    spec: ModelSpec,
    signature: Signature,
    band_names: Sequence[str],
    band_dtype: np.dtype,
    properties: Mapping[str, Any],
) -> InputBinding:
    """Decide how the source's bands feed the model's inputs, and check every shape the signature fixes."""
    props = list(spec.input_properties)
    missing = [p for p in props if p not in properties]
    if missing:
        raise BandMismatchError(
            f"input_properties {missing} are not properties of the image; it has {sorted(properties)}"
        )
    model_inputs = [t for t in signature.inputs if t.name not in props]
    band_dtype = fill_dtype(band_dtype, spec.fill_value)  # masked pixels are filled in it (Job.read)
    layout = spec.layout or infer_layout(model_inputs, band_names, padded=spec.geometry.padded,
                                         array_inputs=spec.input_shapes)
    slots: list[InputSlot] = []
    g = spec.geometry
    if layout == "pixels":
        if g.overlap != (0, 0) or g.out != g.tile:
            raise SpecError(
                "layout='pixels' runs a per-pixel (tabular) model, so the output tile must equal the input tile and "
                f"the overlap must be 0; got tile {tuple(g.tile)}, overlap {tuple(g.overlap)}, output {tuple(g.out)}"
            )
        t = model_inputs[0] if model_inputs else TensorSpec("input", None, None)
        if len(model_inputs) > 1:
            raise SpecError(f"layout='pixels' feeds one (pixels, bands) input, but the model has {len(model_inputs)}")
        if t.shape is not None and (len(t.shape) != 2 or t.shape[1] not in (None, len(band_names))):
            raise BandMismatchError(
                f"the tabular model's input {t.describe()} does not take {len(band_names)} band values per pixel "
                f"({list(band_names)}); select matching bands with --bands"
            )
        slots.append(InputSlot(t.name, tuple(range(len(band_names))), _dtype(spec, t, band_dtype)))
    elif layout in ("NHWC", "NCHW"):
        if len(model_inputs) > 1:
            raise SpecError(
                f"layout {layout} feeds all bands into one input, but the model has inputs "
                f"{[t.name for t in model_inputs]}; use layout='bands'"
            )
        t = model_inputs[0] if model_inputs else TensorSpec("input", None, None)
        _check_stacked(t, layout, len(band_names), g, band_names, inferred=spec.layout is None)
        slots.append(InputSlot(t.name, tuple(range(len(band_names))), _dtype(spec, t, band_dtype)))
    else:
        slots.extend(_band_slots(spec, model_inputs, band_names, band_dtype, g))
    for p in props:
        t = signature.input(p) or TensorSpec(p, None, None)
        value = properties[p]
        default = np.dtype(np.float32) if not isinstance(value, str) else np.dtype(object)
        dtype = spec.input_type_override.get(p) or t.dtype or default
        try:  # here, not on the first batch
            np.asarray(value, dtype=dtype)
        except (TypeError, ValueError, OverflowError):
            raise InputError(
                f"input property {p!r} = {value!r} cannot be converted to {np.dtype(dtype)}, the type of the model's "
                f"input; declare one that holds it with input_type_override={{{p!r}: ...}} (--input-type-override "
                f"{p}:DTYPE), or leave the property out of input_properties"
            ) from None
        rank = len(t.shape) if t.shape else 1
        slots.append(InputSlot(p, (), np.dtype(dtype), prop=value, prop_rank=rank))
    unknown = sorted(set(spec.input_type_override) - {s.name for s in slots})
    if unknown:  # it would be silently ignored
        raise SpecError(f"input_type_override names {unknown}, which are not inputs of the model as bound (layout "
                        f"{layout}); name one of {[s.name for s in slots]} (--input-type-override NAME:DTYPE)")
    # A fixed first axis is the batch the model takes (for tabular models it counts pixels, not tiles).
    fixed = {t.shape[0] for t in model_inputs if t.shape and t.shape[0] is not None} if layout != "pixels" else set()
    batch = min(fixed) if fixed else spec.batch_size
    return InputBinding(layout, tuple(slots), batch, fixed_batch=bool(fixed))


def _dtype(spec: ModelSpec, t: TensorSpec, band_dtype: np.dtype) -> np.dtype:
    return np.dtype(spec.input_type_override.get(t.name) or t.dtype or band_dtype)


def _check_hw(t: TensorSpec, hw: tuple[int | None, int | None], g: TileGeometry) -> None:
    p = g.padded
    h, w = hw
    if (h is not None and h != p.y) or (w is not None and w != p.x):
        need = XY(w if w is not None else p.x, h if h is not None else p.y)
        tile = TileGeometry.core_for(need, g.overlap)
        total = f" (with --overlap-mode total, --overlap {2 * g.overlap.x},{2 * g.overlap.y})" \
            if any(g.overlap) and min(tile) > 0 else ""  # the hint's overlap is per edge
        hint = (
            f"use --tile {tile.x},{tile.y} with --overlap {g.overlap.x},{g.overlap.y}"
            if min(tile) > 0
            else f"use a smaller overlap so that tile + 2*overlap = {need.x} x {need.y}"
        )
        raise TileSizeError(
            f"the model's input {t.describe()} takes {need.x} x {need.y} pixels, but tile {tuple(g.tile)} with "
            f"overlap {tuple(g.overlap)} per edge gives {p.x} x {p.y}{total}; {hint}"
        )


def _check_stacked(t: TensorSpec, layout: str, c: int, g: TileGeometry, band_names: Sequence[str],
                   inferred: bool = False) -> None:
    if t.shape is None:
        return
    if len(t.shape) != 4:
        raise SpecError(f"layout {layout} needs a 4-D input, but the model's input is {t.describe()}")
    ch, hw = (t.shape[1], t.shape[2:]) if layout == "NCHW" else (t.shape[3], t.shape[1:3])
    if ch is not None and ch != c:
        axis, other, other_axis, other_ch, other_hw = ("second", "NHWC", "last", t.shape[3], t.shape[1:3]) \
            if layout == "NCHW" else ("last", "NCHW", "second", t.shape[1], t.shape[2:])
        plausible = inferred and all(d in (None, p) for d, p in zip(other_hw, (g.padded.y, g.padded.x), strict=True))
        hint = (f"; the layout {layout} was inferred: if the channels are the {other_axis} axis (size "
                f"{other_ch or 'any'}), pass layout='{other}' (--layout {other})") if plausible else ""
        raise BandMismatchError(
            f"the model's input {t.describe()} takes {ch} bands but {c} were selected: {list(band_names)} (its channel "
            f"axis, the {axis} in {layout}, has size {ch}); select {ch} bands with --bands{hint}"
        )
    _check_hw(t, hw, g)  # type: ignore[arg-type]


def _band_slots(
    spec: ModelSpec,
    inputs: Sequence[TensorSpec],
    band_names: Sequence[str],
    band_dtype: np.dtype,
    g: TileGeometry,
) -> list[InputSlot]:
    # Earth Engine's layout: each band is its own input; input_shapes groups consecutive bands into an array band.
    groups: list[tuple[str, tuple[int, ...], bool]] = []
    # Array inputs whose name matches no band (Earth Engine's toArray() -> "array") take the next bands in order.
    unnamed = [k for k in spec.input_shapes if not any(n == k or n.startswith(f"{k}_") for n in band_names)]
    i = 0
    while i < len(band_names):
        name = band_names[i]
        array_name = next((k for k in spec.input_shapes if k == name or name.startswith(f"{k}_")), None)
        if array_name is None and unnamed:
            array_name = unnamed.pop(0)
        if array_name is not None and spec.input_shapes[array_name]:
            depth = spec.input_shapes[array_name][0]
            if i + depth > len(band_names):
                raise BandMismatchError(
                    f"input_shapes[{array_name!r}] = [{depth}] needs {depth} bands from {name!r} on, "
                    f"but only {len(band_names) - i} remain: {list(band_names[i:])}"
                )
            groups.append((array_name, tuple(range(i, i + depth)), True))
            i += depth
        else:
            groups.append((name, (i,), False))
            i += 1
    by_name = {t.name: t for t in inputs}
    if inputs and len(inputs) == 1 and len(groups) == 1 and groups[0][0] not in by_name:
        groups = [(inputs[0].name, groups[0][1], groups[0][2])]  # one band, one input: names need not match
    if inputs:
        have = [n for n, _, _ in groups]
        want = [t.name for t in inputs]
        if set(have) != set(want):
            raise BandMismatchError(
                f"the model's inputs {want} do not match the bands {have}. Name the raster bands after the "
                "inputs (band descriptions), select them with --bands, or use a stacked --layout (NCHW/NHWC)"
            )
    slots = []
    for name, idx, is_array in groups:
        t = by_name.get(name, TensorSpec(name, None, None))
        if t.shape is not None:
            if len(t.shape) != 4:
                raise SpecError(f"input {t.describe()}: Earth Engine's layout needs (N, H, W, depth) inputs")
            _check_hw(t, t.shape[1:3], g)  # type: ignore[arg-type]
            if t.shape[3] is not None and t.shape[3] != len(idx):
                raise BandMismatchError(
                    f"input {t.describe()} takes a depth of {t.shape[3]} but gets {len(idx)} band(s); "
                    f"declare input_shapes={{{name!r}: [{t.shape[3]}]}}"
                )
        slots.append(InputSlot(name, idx, _dtype(spec, t, band_dtype), array=is_array))
    return slots


@dataclass(frozen=True)
class OutputBinding:
    """How each declared output band is cut from the model's outputs."""

    bands: tuple[OutputBand, ...]
    sources: tuple[tuple[str, slice | None], ...]
    """Per output band: the model output name and the channel slice (None: the whole tensor)."""
    channels_first: bool
    band_names: tuple[str, ...]
    """Names of the raster bands written (array outputs expand to ``name_0``, ``name_1``, ...)."""
    depths: tuple[int, ...]
    pixels: bool = False
    """Outputs come one row per pixel (tabular models) and are reshaped back to tiles."""

    def unpack(self, outputs: Mapping[str, np.ndarray], n: int, geometry: TileGeometry) -> tuple[np.ndarray, bool]:
        """``(N, bands, h, w)`` float or int array, and whether it is the padded size (to crop or blend)."""
        parts = []
        padded = None
        for band, (name, channels), depth in zip(self.bands, self.sources, self.depths, strict=True):
            if name not in outputs:
                raise OutputShapeError(f"the model returned {sorted(outputs)} but no output {name!r}")
            arr = np.asarray(outputs[name])
            if self.pixels:
                arr = _pixels_to_tiles(arr, n, geometry, name)
            arr = _as_nchw(arr, self.channels_first, name, n)
            if channels is not None:
                arr = arr[:, channels]
            if arr.shape[1] != depth:
                raise OutputShapeError(
                    f"output {name!r} for band {band.name!r} has {arr.shape[1]} channels, expected {depth}; "
                    f"declare it as an array band for one band per channel (dimensions=1, "
                    f"--output-band {band.name}:{band.dtype}:1), or check the layout"
                )
            is_padded = _check_size(arr.shape[2:], geometry, name)
            if padded is not None and is_padded != padded:
                raise OutputShapeError("the model's outputs mix padded and unpadded tile sizes")
            padded = is_padded
            parts.append(arr)
        return (parts[0] if len(parts) == 1 else np.concatenate([p.astype(np.result_type(*parts)) for p in parts],
                                                                   axis=1)), bool(padded)


def _pixels_to_tiles(arr: np.ndarray, n: int, g: TileGeometry, name: str) -> np.ndarray:
    h, w = g.tile.y, g.tile.x
    if arr.ndim == 0 or arr.shape[0] != n * h * w:
        raise OutputShapeError(
            f"output {name!r} has shape {arr.shape}; a per-pixel model must return one row per pixel ({n * h * w})"
        )
    return arr.reshape(n, h, w, *arr.shape[1:])


def _as_nchw(arr: np.ndarray, channels_first: bool, name: str, n: int) -> np.ndarray:
    if arr.ndim == 0 or arr.shape[0] != n:
        raise OutputShapeError(
            f"output {name!r} has shape {arr.shape}; expected a batch of {n} instances on the first axis"
        )
    if arr.ndim == 1:  # one value per instance: a 1x1 output tile
        return arr.reshape(n, 1, 1, 1)
    if arr.ndim == 2:  # a vector per instance
        return arr.reshape(n, arr.shape[1], 1, 1)
    if arr.ndim == 3:
        return arr[:, None]
    if arr.ndim == 4:
        return arr if channels_first else arr.transpose(0, 3, 1, 2)
    raise OutputShapeError(f"output {name!r} has shape {arr.shape}; expected rank 1 to 4")


def _check_size(hw: tuple[int, ...], g: TileGeometry, name: str) -> bool:
    out, padded = g.out, g.padded_output
    if tuple(hw) == (out.y, out.x):
        return False
    if padded is not None and tuple(hw) == (padded.y, padded.x) and padded != out:
        return True
    expect = f"{out.x} x {out.y}" + (f" or the padded {padded.x} x {padded.y}" if padded and padded != out else "")
    raise OutputShapeError(
        f"output {name!r} is {hw[-1]} x {hw[-2]} pixels per tile, but output_tile_size gives {expect}; "
        "set --output-tile to what the model returns"
    )


def bind_outputs(
    spec: ModelSpec,
    signature: Signature,
    layout: str,
    probe: Mapping[str, np.ndarray] | None = None,
) -> OutputBinding:
    """Match declared output bands to the model's outputs. ``probe`` is one run's outputs, for dynamic shapes."""
    pixels = layout == "pixels"
    channels_first = (
        spec.output_layout == "channels_first" if spec.output_layout else layout == "NCHW"
    )
    shapes: dict[str, tuple[int | None, ...] | None] = {t.name: t.shape for t in signature.outputs}
    if probe is not None:
        shapes.update({k: tuple(v.shape) for k, v in probe.items()})
    if pixels:  # (pixels,) or (pixels, K): present them as (N, H, W) / (N, H, W, K)
        shapes = {k: (None if s is None else (None, None, None, *s[1:])) for k, s in shapes.items()}
    outputs = list(shapes)

    def channels(name: str) -> int | None:
        s = shapes.get(name)
        if s is None:
            return None
        if len(s) == 4:
            return s[1] if channels_first and not pixels else s[3]
        if len(s) == 2:
            return s[1]
        return 1

    bands = list(spec.output_bands)
    if not bands:  # default: every model output, its own dtype
        bands = []
        # an open signature (e.g. a hosted model without metadata): the outputs one probe run returned
        for t in signature.outputs or tuple(TensorSpec(k, None, None) for k in (probe or {})):
            c = channels(t.name)
            dtype = t.dtype if t.dtype is not None and t.dtype.kind in "biuf" else np.dtype("float32")
            if probe is not None and t.name in probe:
                dtype = probe[t.name].dtype
            bands.append(OutputBand(t.name, np.dtype(dtype), 1 if (c or 1) > 1 else 0))
    sources: list[tuple[str, slice | None]] = []
    names = [b.name for b in bands]
    if all(b.name in shapes for b in bands):
        sources = [(b.name, None) for b in bands]
    elif len(outputs) == 1 and len(bands) == 1:
        sources = [(outputs[0], None)]
    elif len(outputs) == 1 and all(b.dimensions == 0 for b in bands) and channels(outputs[0]) in (len(bands), None):
        sources = [(outputs[0], slice(i, i + 1)) for i in range(len(bands))]
    else:
        raise OutputShapeError(
            f"output bands {names} do not match the model's outputs {outputs}; name the output bands after the "
            "model's outputs, or declare one band per channel of a single output"
        )
    depths = []
    for b, (name, sl) in zip(bands, sources, strict=True):
        if sl is not None or b.dimensions == 0:
            depths.append(1)
        else:
            c = channels(name)
            if c is None:
                raise OutputShapeError(f"cannot tell the depth of vector output {name!r} from the signature")
            depths.append(c)
    band_names: list[str] = []
    for b, d in zip(bands, depths, strict=True):
        band_names.extend([b.name] if b.dimensions == 0 else [f"{b.name}_{i}" for i in range(d)])
    return OutputBinding(
        tuple(bands), tuple(sources), channels_first and not pixels, tuple(band_names), tuple(depths), pixels
    )


def needs_probe(spec: ModelSpec, signature: Signature, layout: str) -> bool:
    """Whether output depths can only be known by running the model once."""
    try:
        bind_outputs(spec, signature, layout)
    except OutputShapeError:
        return True
    return not signature.outputs
