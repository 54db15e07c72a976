"""Build a card from plain values: what ``tilecast card`` collects from its flags, or a caller from Python.

The thirty-odd things a card says are grouped by concern (:class:`ModelFields`, :class:`InputFields`,
:class:`TileFields`, :class:`OutputFields`, :class:`GridFields`); :func:`build_card` also takes them as flat keywords.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SpecError
from ..plan import XY, parse_resolution, parse_size
from ..runtimes.scaled import Scaling
from ..sources import parse_crs
from ..spec import OutputBand, parse_dtype
from .schema import CLASSIFICATION_SCHEMA, EO_SCHEMA, MLM_SCHEMA, Card

__all__ = ["CardFields", "GridFields", "InputFields", "ModelFields", "OutputFields", "TileFields", "build_card"]

_DIM_ORDER = {
    "NCHW": ["batch", "channel", "height", "width"],
    "NHWC": ["batch", "height", "width", "channel"],
    "bands": ["batch", "height", "width", "channel"],
    "pixels": ["batch", "channel"],
}
_ARTIFACTS = {
    "onnx": ("onnx", "application/octet-stream; application=onnx", "ONNX"),
    "torchscript": ("torch.jit.save", "application/octet-stream; application=pytorch", "PyTorch"),
    "torch.export": ("torch.export.save", "application/octet-stream; application=pytorch", "PyTorch"),
    "savedmodel": ("tf.saved_model.save", "application/x-directory", "TensorFlow"),
    "keras": ("keras.Model.save", "application/octet-stream", "Keras"),
    "torchserve": ("torch-model-archiver", "application/zip; application=torchserve", "PyTorch"),
    "tflite": ("tf.lite.TFLiteConverter", "application/octet-stream; application=tflite", "TensorFlow Lite"),
}


@dataclass(frozen=True, kw_only=True)
class ModelFields:
    """What the model is: ``mlm:name``, architecture, framework and the artifact the asset points to."""

    name: str
    architecture: str = "unknown"
    framework: str | None = None
    artifact: str = "onnx"
    model_href: str | None = None
    description: str | None = None


@dataclass(frozen=True, kw_only=True)
class InputFields:
    """Which bands feed which input, in which layout, dtype and value scaling."""

    bands: Sequence[str]
    layout: str = "NCHW"
    input_names: Sequence[str] | None = None
    input_dtype: Any = "float32"
    scaling: Sequence[Scaling | None] | None = None
    common_names: Mapping[str, str] | None = None


@dataclass(frozen=True, kw_only=True)
class TileFields:
    """Earth Engine's tiling parameters and how tiles are merged, padded and filled."""

    input_tile_size: Any
    input_overlap_size: Any = (0, 0)
    overlap_mode: str = "per_edge"
    output_tile_size: Any = None
    blend: str = "crop"
    padding: str = "zero"
    fill_value: float = 0
    nodata: float | None = None
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class OutputFields:
    """The declared outputs, the model outputs they come from, and which are reduced with ``argmax``."""

    output_bands: Sequence[OutputBand] = ()
    output_names: Sequence[str] | None = None
    argmax: Mapping[str, int] | None = None
    tasks: Sequence[str] = ("semantic-segmentation",)


@dataclass(frozen=True, kw_only=True)
class GridFields:
    """The projection / resolution policy (Earth Engine's ``proj`` and ``fixInputProj``)."""

    crs: str | None = None
    resolution: Any = None
    gsd_tolerance: float = 0.01
    fix_input_proj: bool = False
    resampling: str = "bilinear"


_GROUPS = {"model": ModelFields, "inputs": InputFields, "tiles": TileFields, "outputs": OutputFields,
           "grid": GridFields}


@dataclass(frozen=True)
class CardFields:
    """Everything :func:`build_card` needs, grouped by concern."""

    model: ModelFields
    inputs: InputFields
    tiles: TileFields
    outputs: OutputFields = field(default_factory=OutputFields)
    grid: GridFields = field(default_factory=GridFields)

    @classmethod
    def from_keywords(cls, **keywords: Any) -> CardFields:
        """The groups from flat keywords (``name=``, ``bands=``, ``input_tile_size=``...)."""
        groups: dict[str, dict[str, Any]] = {g: {} for g in _GROUPS}
        owner = {f.name: g for g, c in _GROUPS.items() for f in dataclasses.fields(c)}
        unknown = sorted(set(keywords) - set(owner))
        if unknown:
            raise SpecError(f"build_card: unknown keyword(s) {unknown}; known: {sorted(owner)}")
        for k, v in keywords.items():
            groups[owner[k]][k] = v
        try:
            return cls(**{g: c(**groups[g]) for g, c in _GROUPS.items()})
        except TypeError as exc:
            raise SpecError(f"build_card: {exc}; name, bands and input_tile_size are required") from None

    def keywords(self) -> dict[str, Any]:
        """The flat keywords again (what :meth:`from_keywords` reads)."""
        return {f.name: getattr(getattr(self, g), f.name) for g, c in _GROUPS.items() for f in dataclasses.fields(c)}


def build_card(fields: CardFields | None = None, /, **keywords: Any) -> Card:
    """A card from :class:`CardFields`, or from the same values as flat keywords (``build_card(name=..., bands=...,
    input_tile_size=...)``); keywords given with ``fields`` replace its values."""
    if fields is None:
        fields = CardFields.from_keywords(**keywords)
    elif keywords:
        fields = CardFields.from_keywords(**{**fields.keywords(), **keywords})
    tiles = fields.tiles
    tile = parse_size(tiles.input_tile_size, "input_tile_size")
    overlap = parse_size(tiles.input_overlap_size, "input_overlap_size")
    padded = XY(tile.x + 2 * overlap.x, tile.y + 2 * overlap.y) if tiles.overlap_mode == "per_edge" \
        else XY(tile.x + overlap.x, tile.y + overlap.y)
    out_tile = parse_size(tiles.output_tile_size, "output_tile_size") if tiles.output_tile_size is not None else tile
    outputs, extra_outputs = _mlm_outputs(fields.outputs, fields.inputs.layout, out_tile)
    props = _properties(fields, tile, overlap, out_tile)
    props["mlm:input"] = _mlm_inputs(fields.inputs, padded)
    props["mlm:output"] = outputs
    if extra_outputs:
        props["tilecast:outputs"] = extra_outputs
    return Card(_item(fields, props), source="flags")


def _mlm_inputs(inputs: InputFields, padded: XY) -> list[dict[str, Any]]:
    dtype = str(parse_dtype(inputs.input_dtype, "input dtype"))
    bands, scaling, layout = list(inputs.bands), inputs.scaling, inputs.layout
    if scaling is not None and len(scaling) not in (1, len(bands)):
        raise SpecError(f"{len(scaling)} value scalings for {len(bands)} bands; give one per band, or one for all")
    first = (inputs.input_names or ["input"])[0]
    if layout == "pixels":  # tabular models: one (pixels, bands) row per pixel
        return [_mlm_input(first, bands, [-1, len(bands)], ["batch", "channel"], dtype, scaling)]
    if layout == "bands":
        names = list(inputs.input_names or bands)
        out = []
        for i, b in enumerate(bands):
            sc = None if scaling is None else scaling[0 if len(scaling) == 1 else i]
            out.append(_mlm_input(names[i], [b], [-1, padded.y, padded.x, 1], _DIM_ORDER["bands"], dtype,
                                  None if sc is None else [sc]))
        return out
    c = len(bands)
    shape = [-1, c, padded.y, padded.x] if layout == "NCHW" else [-1, padded.y, padded.x, c]
    return [_mlm_input(first, bands, shape, _DIM_ORDER[layout], dtype, scaling)]


def _mlm_input(name: str, bands: list[str], shape: list[int], dim_order: list[str], dtype: str,
               scaling: Sequence[Scaling | None] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": name,
        "bands": bands,
        "input": {"shape": shape, "dim_order": dim_order, "data_type": dtype},
    }
    if scaling is not None and any(s is not None for s in scaling):
        out["value_scaling"] = [None if s is None else s.to_mlm() for s in scaling]
    return out


def _mlm_outputs(outputs: OutputFields, layout: str, out_tile: XY) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    argmax = dict(outputs.argmax or {})
    names = outputs.output_names
    mlm_outputs = []
    extra_outputs: dict[str, Any] = {}
    for i, band in enumerate(outputs.output_bands):
        depth = -1 if band.dimensions else 1
        if layout == "pixels":
            result = {"shape": [-1, depth] if band.dimensions else [-1], "data_type": str(band.dtype),
                      "dim_order": ["batch", "channel"] if band.dimensions else ["batch"]}
        else:
            result = {"shape": [-1, depth, out_tile.y, out_tile.x], "data_type": str(band.dtype),
                      "dim_order": ["batch", "channel", "height", "width"]}
        out: dict[str, Any] = {"name": band.name, "tasks": list(outputs.tasks), "result": result}
        if band.classes:
            out["classification:classes"] = _classes(band)
        mlm_outputs.append(out)
        extra: dict[str, Any] = {}
        if band.dimensions:
            extra["dimensions"] = band.dimensions
        if names and i < len(names) and names[i] != band.name:
            extra["source"] = names[i]
        if band.name in argmax:
            extra["argmax"] = argmax[band.name]
        if extra:
            extra_outputs[band.name] = extra
    return mlm_outputs, extra_outputs


def _classes(band: OutputBand) -> list[dict[str, Any]]:
    colors = dict(band.colors or ())
    for v, c in colors.items():  # MLM's color_hint is RRGGBB: an alpha would be lost without a word
        if len(c) > 3 and int(c[3]) != 255:
            raise SpecError(f"the colour of class {v} of {band.name!r} has alpha {int(c[3])}; a card's color_hint "
                            "is RRGGBB (STAC classification), with no alpha: give an opaque colour (#RRGGBB)")
    return [
        {"value": v, "name": _slug(n), "description": n,
         **({"color_hint": "{:02X}{:02X}{:02X}".format(*tuple(colors[v][:3]))} if v in colors else {})}
        for v, n in band.classes or ()
    ]


def _properties(fields: CardFields, tile: XY, overlap: XY, out_tile: XY) -> dict[str, Any]:
    m, t, g = fields.model, fields.tiles, fields.grid
    framework, _, _ = _framework(m.artifact, m.framework)
    props: dict[str, Any] = {
        "datetime": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mlm:name": m.name,
        "mlm:architecture": m.architecture,
        "mlm:tasks": list(fields.outputs.tasks),
        "mlm:framework": framework,
        "mlm:input": None,
        "mlm:output": None,
        "tilecast:tile_size": list(tile),
        "tilecast:overlap": list(overlap),
        "tilecast:overlap_mode": t.overlap_mode,
        "tilecast:output_tile_size": list(out_tile),
        "tilecast:layout": fields.inputs.layout,
        "tilecast:fix_input_proj": bool(g.fix_input_proj),
        "tilecast:gsd_tolerance": float(g.gsd_tolerance),
        "tilecast:resampling": g.resampling,
        "tilecast:fill_value": _json_number(float(t.fill_value)),
        "tilecast:blend": t.blend,
        "tilecast:padding": t.padding,
    }
    if m.description:
        props["description"] = m.description
    if t.batch_size:
        props["mlm:batch_size_suggestion"] = int(t.batch_size)
    if not g.gsd_tolerance >= 0:
        raise SpecError(f"gsd_tolerance is a relative difference, >= 0 (e.g. 0.01 for 1 %), got {g.gsd_tolerance}")
    if g.crs:
        parse_crs(g.crs)  # an unknown CRS is refused now, not when the model is first used
        props["tilecast:crs"] = str(g.crs)
    if g.resolution is not None:
        props["tilecast:gsd"] = list(parse_resolution(g.resolution, "resolution"))
    if t.nodata is not None:
        props["tilecast:nodata"] = _json_number(t.nodata)
    return props


def _item(fields: CardFields, props: dict[str, Any]) -> dict[str, Any]:
    m = fields.model
    _, artifact_type, media = _framework(m.artifact, m.framework)
    common = dict(fields.inputs.common_names or {})
    band_objects = [{"name": b, **({"eo:common_name": common[b]} if b in common else {})}
                    for b in fields.inputs.bands]
    classified = any(b.classes for b in fields.outputs.output_bands)
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA] + ([CLASSIFICATION_SCHEMA] if classified else [])
        + ([EO_SCHEMA] if common else []),
        "id": m.name,
        "geometry": None,
        "properties": props,
        "links": [],
        "assets": {
            "model": {
                "href": m.model_href or m.name,
                "type": media,
                "roles": ["mlm:model"],
                "mlm:artifact_type": artifact_type,
                "bands": band_objects,
            }
        },
    }


def _framework(artifact: str, framework: str | None) -> tuple[str, str, str]:
    if artifact not in _ARTIFACTS:
        raise SpecError(f"unknown model artifact {artifact!r}; one of {sorted(_ARTIFACTS)}")
    artifact_type, media, fw = _ARTIFACTS[artifact]
    return framework or fw, artifact_type, media


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text)) or "class"


def _json_number(v: float) -> float | str:
    return "nan" if isinstance(v, float) and np.isnan(v) else v
