"""Feature properties <-> model tensors: pure numpy/pandas, no I/O.

A property is one column. Earth Engine sends each property as its own model input (``"named"`` layout); tabular
models converted with skl2onnx take one ``(N, F)`` float input instead (``"stacked"``), so both are supported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import CastError, InputError, OutputShapeError, SpecError
from ..plan import infer_layout
from ..runtimes.base import Signature, TensorSpec
from ..spec import parse_dtype

__all__ = [
    "Column",
    "OutputProperty",
    "bind_properties",
    "column_values",
    "outputs_to_columns",
    "parse_output_properties",
]

NullPolicy = Literal["skip", "fill", "error"]
ArrayColumns = Literal["list", "split"]
_STRING = np.dtype(object)
_STRING_NAMES = ("str", "string", "object")


@dataclass(frozen=True)
class OutputProperty:
    """One predicted property (Earth Engine's ``outputProperties`` entry); ``output`` is the model output it reads."""

    name: str
    dtype: np.dtype
    dimensions: int = 0
    output: str | None = None

    @property
    def is_string(self) -> bool:
        return self.dtype == _STRING


def _parse_property_dtype(value: Any, what: str) -> np.dtype:
    if value is str or (isinstance(value, str) and value.lower() in _STRING_NAMES):
        return _STRING
    if value is bool or (isinstance(value, str) and value.lower() in ("bool", "boolean")):
        return np.dtype(bool)
    return parse_dtype(value, what)


def parse_output_properties(value: Any) -> tuple[OutputProperty, ...]:
    """Accept ``{"crop": "int32"}``, ``{"scores": {"type": "float32", "dimensions": 1, "output": "probabilities"}}``,
    or strings ``"NAME[=OUTPUT]:DTYPE[:DIMS]"`` such as ``"crop=label:int32"``."""
    if value is None or (not isinstance(value, (str, Mapping)) and not list(value)):
        raise SpecError(
            "output_properties is required (Earth Engine's outputProperties): give the predicted properties, "
            "e.g. {'crop': 'int32'} or --output-property crop:int32"
        )
    items: list[tuple[str, Any]] = []
    if isinstance(value, Mapping):
        items = list(value.items())
    else:
        for v in [value] if isinstance(value, str) else value:
            if isinstance(v, OutputProperty):
                items.append((v.name, v))
                continue
            if not isinstance(v, str):
                raise SpecError(f"output property {v!r}: use 'NAME[=OUTPUT]:DTYPE[:DIMS]' or a mapping name -> dtype")
            parts = v.split(":")
            if not 2 <= len(parts) <= 3 or not parts[0]:
                raise SpecError(f"output property {v!r}: use NAME[=OUTPUT]:DTYPE[:DIMS], e.g. crop:int32")
            name, _, output = parts[0].partition("=")
            items.append((name, {"type": parts[1], "dimensions": parts[2] if len(parts) == 3 else 0,
                                 "output": output or None}))
    props = []
    for name, spec in items:
        if isinstance(spec, OutputProperty):
            props.append(spec)
            continue
        if isinstance(spec, Mapping) and ("type" in spec or "dtype" in spec):
            raw_dims = spec.get("dimensions", 0)
            try:
                dims = int(raw_dims)
            except (TypeError, ValueError):
                raise SpecError(f"output property {name!r}: dimensions must be 0 or 1, got {raw_dims!r}") from None
            dtype = _parse_property_dtype(spec.get("dtype", spec.get("type")), f"output property {name!r}")
            props.append(OutputProperty(name, dtype, dims, spec.get("output")))
        else:
            props.append(OutputProperty(name, _parse_property_dtype(spec, f"output property {name!r}")))
    for p in props:
        if p.dimensions not in (0, 1):
            raise SpecError(f"output property {p.name!r}: dimensions must be 0 (scalar) or 1 (array), got "
                            f"{p.dimensions}")
        if p.is_string and p.dimensions:
            raise SpecError(f"output property {p.name!r}: string outputs must be scalars (dimensions 0)")
    names = [p.name for p in props]
    if len(set(names)) != len(names):
        raise SpecError(f"output property names must be unique, got {names}")
    return tuple(props)


@dataclass
class Column:
    """One input property for a batch: values ``(N, *shape)`` and a ``(N,)`` null mask."""

    name: str
    values: np.ndarray
    nulls: np.ndarray


def column_values(
    series: Any, name: str, dtype: np.dtype | None = None, shape: Sequence[int] | None = None
) -> Column:
    """Turn a pandas column into an array: numbers, booleans, strings, or array-valued (lists or arrays)."""
    import pandas as pd

    nulls = np.asarray(series.isna(), dtype=bool)
    kind = getattr(series.dtype, "kind", "O")
    if isinstance(series.dtype, pd.api.extensions.ExtensionDtype) and kind in "biuf":
        values = (series.to_numpy(dtype="float64", na_value=np.nan) if nulls.any()
                  else series.to_numpy(dtype=series.dtype.numpy_dtype))
    elif kind in "biuf":
        values = series.to_numpy()
    else:
        values = _object_values(series.to_numpy(dtype=object), nulls, name, shape)
    if shape is not None and tuple(shape) and values.ndim == 1:
        raise InputError(
            f"input_shapes says property {name!r} is an array of shape {list(shape)}, but its values are scalars; "
            "drop it from input_shapes or store arrays (lists) in the column"
        )
    if dtype is not None and values.dtype != dtype:
        values = _cast_input(values, nulls, dtype, name)
    return Column(name, values, nulls)


def _object_values(raw: np.ndarray, nulls: np.ndarray, name: str, shape: Sequence[int] | None) -> np.ndarray:
    present = raw[~nulls]
    if not present.size:
        return np.full(raw.shape, np.nan) if not shape else np.full((len(raw), *shape), np.nan)
    first = present[0]
    if isinstance(first, (list, tuple, np.ndarray)):
        want = tuple(shape) if shape else np.shape(first)
        out = np.full((len(raw), *want), np.nan)
        for i in np.flatnonzero(~nulls):
            item = np.asarray(raw[i], dtype=float)
            if item.shape != want:
                if item.size == int(np.prod(want)):
                    item = item.reshape(want)
                else:
                    raise InputError(
                        f"property {name!r} of feature {i} has shape {list(item.shape)}, but "
                        f"{'input_shapes says' if shape else 'the first feature has'} {list(want)}; every feature "
                        "must carry an array of the same shape"
                    )
            out[i] = item
        return out
    if isinstance(first, (bool, np.bool_)) and all(isinstance(v, (bool, np.bool_)) for v in present):
        out = np.zeros(len(raw), dtype=bool)
        out[~nulls] = present.astype(bool)
        return out
    if isinstance(first, str):
        if not all(isinstance(v, str) for v in present):
            raise InputError(f"property {name!r} mixes strings and other values; make the column one type")
        out = raw.copy()
        out[nulls] = ""
        return out
    try:
        out = np.full(len(raw), np.nan)
        out[~nulls] = present.astype(float)
        return out
    except (TypeError, ValueError):
        raise InputError(
            f"property {name!r} holds {type(first).__name__} values that cannot be sent to a model; "
            "use numbers, booleans, strings or arrays"
        ) from None


def _cast_input(values: np.ndarray, nulls: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if dtype == _STRING:
        return values.astype(str).astype(object)
    if values.dtype == _STRING:
        try:
            out = np.zeros(values.shape, dtype=dtype)
            out[~nulls] = values[~nulls].astype(float).astype(dtype)
            return out
        except ValueError:
            raise InputError(
                f"property {name!r} holds strings that are not numbers, but the model takes {dtype}; "
                "convert the column, or drop the input_type_override"
            ) from None
    if values.dtype.kind == "f" and dtype.kind in "iub":
        return np.where(nulls.reshape(nulls.shape + (1,) * (values.ndim - 1)), 0, values).astype(dtype)
    return values.astype(dtype)


def apply_nulls(columns: Sequence[Column], policy: NullPolicy, fill_value: Any, ids: Any = None) -> np.ndarray:
    """Handle nulls per ``policy``; returns the ``(N,)`` mask of rows to send to the model."""
    if policy not in ("skip", "fill", "error"):
        raise SpecError(f"nulls must be 'skip', 'fill' or 'error', got {policy!r}")
    n = len(columns[0].nulls) if columns else 0
    keep = np.ones(n, dtype=bool)
    for col in columns:
        if not col.nulls.any():
            continue
        if policy == "error":
            rows = np.flatnonzero(col.nulls)
            shown = [ids[i] for i in rows[:5]] if ids is not None else rows[:5].tolist()
            raise InputError(
                f"property {col.name!r} is null (missing, NaN, off the raster or no pixel inside) for "
                f"{len(rows)} feature(s), e.g. {shown}; pass nulls='fill' with fill_value=... "
                "(--nulls fill --fill-value V) to replace them, or nulls='skip' (--nulls skip) to leave their "
                "predictions empty"
            )
        if policy == "fill":
            fill = "" if col.values.dtype == _STRING else fill_value
            col.values = col.values.copy()
            col.values[col.nulls] = fill
        else:
            keep &= ~col.nulls
    return keep


Layout = Literal["auto", "named", "stacked"]


def choose_layout(signature: Signature, names: Sequence[str], layout: Layout = "auto") -> str:
    """``named`` when the model's inputs are property names (Earth Engine), ``stacked`` for one ``(N, F)`` input."""
    if layout not in ("auto", "named", "stacked"):
        raise SpecError(f"layout must be 'auto', 'named' or 'stacked', got {layout!r}")
    if layout == "stacked":
        return layout
    if layout == "auto" and infer_layout(signature.inputs, names, fallback="stacked") != "bands":
        return "stacked"  # one input, not named after a property
    missing = [n for n in signature.input_names if n not in names]
    if missing:
        raise InputError(
            f"the model takes inputs {signature.input_names}, but there are no properties {missing} among the input "
            f"properties {list(names)}; name the input properties after the model's inputs, or send them all to one "
            "(N, features) input (layout='stacked', --layout stacked)"
        )
    return "named"


def bind_properties(
    columns: Sequence[Column], signature: Signature, layout: str, rows: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """The model batch: one tensor per property (``named``) or one ``(N, F)`` tensor (``stacked``)."""
    take = (lambda v: v) if rows is None else (lambda v: v[rows])
    if layout == "stacked":
        t = signature.inputs[0] if signature.inputs else TensorSpec("input", None, None)
        dtype = t.dtype if t.dtype is not None else np.dtype("float32")
        if len(columns) == 1 and columns[0].values.ndim == 4:  # image patches go to the one input as they are
            if t.shape is not None and len(t.shape) != 4:
                raise InputError(
                    f"the model's input {t.name!r} takes {len(t.shape)}-D tensors {list(t.shape)}, but patches "
                    "(patch_size, --patch) are (N, H, W, C) windows; use a model with an image input, or leave "
                    "out patch_size (--patch) to send values or statistics per feature"
                )
            return {t.name: _image_layout(take(columns[0].values), t).astype(dtype, copy=False)}
        parts = []
        for col in columns:
            if col.values.dtype == _STRING and dtype != _STRING:
                raise InputError(
                    f"property {col.name!r} holds strings, but the model's input {t.name!r} takes {dtype}; "
                    "leave it out of input_properties (--input-property), encode it as numbers first, or use a "
                    "model with a string input per property"
                )
            v = take(col.values)
            parts.append(v.reshape(len(v), -1))
        stacked = np.concatenate(parts, axis=1) if parts else np.zeros((0, 0))
        width = t.shape[1] if t.shape is not None and len(t.shape) == 2 else None
        if width is not None and stacked.shape[1] != width:
            names = [c.name for c in columns]
            raise InputError(
                f"the model's input {t.name!r} takes {width} values per feature, but the input properties give "
                f"{stacked.shape[1]}: {names}; pass input_properties (--input-property) in the order the model "
                "was trained on"
            )
        return {t.name: np.ascontiguousarray(stacked, dtype=dtype)}
    batch = {}
    for col in columns:
        t = signature.input(col.name)
        if signature.inputs and t is None:
            continue
        v = take(col.values)
        if t is not None and t.dtype is not None and v.dtype != t.dtype:
            if (v.dtype == _STRING) != (t.dtype == _STRING):
                raise InputError(
                    f"property {col.name!r} holds {'strings' if v.dtype == _STRING else v.dtype} but the model "
                    f"input {col.name!r} takes {'strings' if t.dtype == _STRING else t.dtype}; convert the column "
                    "or set input_type_override"
                )
            v = v.astype(t.dtype)
        if t is not None and t.shape is not None and len(t.shape) == v.ndim + 1 and t.shape[-1] in (1, None):
            v = v[..., None]
        if t is not None and v.ndim == 4:
            v = _image_layout(v, t)
        if t is not None and t.shape is not None and len(t.shape) != v.ndim:
            raise InputError(
                f"property {col.name!r} gives {list(v.shape[1:]) or 'one value'} per feature, but the model's "
                f"input {t.name!r} takes {len(t.shape)}-D tensors {list(t.shape)}; match the property to the input "
                "(input_shapes / --input-shape, patch_size / --patch) or send another property"
            )
        batch[col.name] = v
    return batch


def _image_layout(values: np.ndarray, t: TensorSpec) -> np.ndarray:
    """``(N, H, W, C)`` patches, transposed to ``(N, C, H, W)`` when the model's input is channels-first."""
    if infer_layout([t], values.shape[3], fallback="NHWC") == "NCHW":
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))
    return values


def match_outputs(props: Sequence[OutputProperty], signature: Signature) -> dict[str, str | None]:
    """Which model output feeds each property: by ``output`` or by name, else the remaining outputs in order."""
    outputs = signature.output_names
    chosen: dict[str, str | None] = {}
    for p in props:
        if p.output is not None:
            if outputs and p.output not in outputs:
                raise SpecError(f"output property {p.name!r} reads model output {p.output!r}, but the model's "
                                f"outputs are {outputs}")
            chosen[p.name] = p.output
        elif p.name in outputs or not outputs:
            chosen[p.name] = p.name
    rest = [o for o in outputs if o not in chosen.values()]
    for p in props:
        if p.name not in chosen:
            if not rest:
                raise SpecError(
                    f"output property {p.name!r} has no model output left to read; the model's outputs are "
                    f"{outputs}. Name it after an output or write NAME=OUTPUT:DTYPE"
                )
            chosen[p.name] = rest.pop(0)
    return chosen


def outputs_to_columns(
    outputs: Mapping[str, np.ndarray], props: Sequence[OutputProperty], sources: Mapping[str, str | None], n: int
) -> dict[str, np.ndarray]:
    """Cast each model output to its property's dtype: ``(n,)`` scalars or ``(n, k)`` arrays."""
    cols = {}
    for p in props:
        key = sources[p.name]
        if key not in outputs:
            if len(outputs) == 1 and len(props) == 1:
                key = next(iter(outputs))
            else:
                raise OutputShapeError(f"the model returned outputs {list(outputs)}, none named {key!r} for "
                                       f"property {p.name!r}")
        arr = np.asarray(outputs[key])
        if arr.shape[:1] != (n,):
            raise OutputShapeError(f"model output {key!r} has shape {list(arr.shape)}; expected {n} rows, one per "
                                   "feature")
        if p.dimensions == 0:
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 1:
                raise OutputShapeError(
                    f"model output {key!r} has {arr.shape[1:]} values per feature, but property {p.name!r} is "
                    "declared scalar; declare it with dimensions 1 (e.g. NAME:float32:1)"
                )
        else:
            arr = arr.reshape(n, -1)
        cols[p.name] = _cast_output(arr, p)
    return cols


def _cast_output(arr: np.ndarray, p: OutputProperty) -> np.ndarray:
    if p.is_string:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=object)
    if arr.dtype == _STRING or arr.dtype.kind in "SU":
        try:
            arr = arr.astype(float)
        except ValueError:
            raise CastError(f"property {p.name!r} got strings from the model; declare it as str") from None
    if p.dtype.kind in "iu" and arr.dtype != p.dtype and arr.size:
        vals = np.rint(arr) if arr.dtype.kind == "f" else arr
        if arr.dtype.kind == "f" and not np.isfinite(vals).all():
            raise CastError(f"property {p.name!r} got NaN or infinite predictions that {p.dtype} cannot hold; "
                            "declare a float dtype")
        info = np.iinfo(p.dtype)
        lo, hi = vals.min(), vals.max()
        if lo < info.min or hi > info.max:
            raise CastError(f"property {p.name!r} got predictions in [{lo}, {hi}] that do not fit {p.dtype} "
                            f"({info.min}..{info.max}); declare a wider dtype")
        return vals.astype(p.dtype)
    return arr.astype(p.dtype, copy=False)
