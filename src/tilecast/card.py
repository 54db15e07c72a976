"""Model cards: a STAC item with the MLM extension that lets a model describe how it must be fed.

MLM already says which bands a model takes (``mlm:input[].bands``), how their values are scaled (``value_scaling``),
the tensor shape, dimension order and dtype, and what comes out (``mlm:output``, ``classification:classes``). It has no
words for tiling, so tilecast adds namespaced fields for what Earth Engine makes every caller repeat::

    tilecast:tile_size         [w, h]   core tile (Earth Engine's inputTileSize)
    tilecast:overlap           [x, y]   inputOverlapSize; with tilecast:overlap_mode ("per_edge" | "total")
    tilecast:output_tile_size  [w, h]   outputTileSize
    tilecast:layout            "NCHW" | "NHWC" | "bands"
    tilecast:crs, tilecast:gsd [x, y], tilecast:gsd_tolerance (relative), tilecast:fix_input_proj,
    tilecast:resampling        the projection / resolution policy
    tilecast:fill_value, tilecast:nodata   what masked input pixels are sent as, and the output nodata
    tilecast:blend, tilecast:padding       recommended merge of overlapping tiles, and edge padding
    tilecast:outputs           {band: {"dimensions": 0|1, "argmax": axis}} for what MLM's result does not say

The card lives in a sidecar ``<model>.json`` (``landcover.onnx.json``, ``saved_model.json`` for a directory) and, for
ONNX, also in the model's ``metadata_props`` under :data:`ONNX_KEY`. Models published for Deepness or GeoDeep carry
their own metadata keys; :func:`card_from_deepness` turns those into a card so they run unchanged.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BandMismatchError, ModelLoadError, SpecError, TilecastWarning
from .runtimes.base import Signature, TensorSpec
from .runtimes.scaled import Scaling
from .spec import OutputBand, parse_dtype

__all__ = [
    "MLM_SCHEMA",
    "ONNX_KEY",
    "Card",
    "CardParams",
    "build_card",
    "card_from_deepness",
    "card_path",
    "check_card_signature",
    "match_bands",
    "read_card",
    "validate_card",
    "write_card",
]

MLM_SCHEMA = "https://stac-extensions.github.io/mlm/v1.4.0/schema.json"
CLASSIFICATION_SCHEMA = "https://stac-extensions.github.io/classification/v2.0.0/schema.json"
EO_SCHEMA = "https://stac-extensions.github.io/eo/v2.0.0/schema.json"
ONNX_KEY = "mlm:item"
"""The ``metadata_props`` key that holds the card (JSON) inside an ONNX model."""

DEEPNESS_KEYS = ("model_type", "class_names", "resolution", "tiles_size", "tiles_overlap",
                 "standardization_mean", "standardization_std")
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
}


def card_path(model_path: str | os.PathLike) -> Path:
    """The sidecar next to a model: ``model.onnx`` -> ``model.onnx.json``; a directory ``m/`` -> ``m.json``."""
    return Path(str(Path(model_path)).rstrip("/\\") + ".json")


@dataclass
class Card:
    """A model card: the STAC item as a plain dict, plus where it came from."""

    item: dict[str, Any]
    source: str = "sidecar"
    """``sidecar``, ``embedded`` (ONNX metadata_props or a Torch archive's extra file), ``deepness`` (converted from
    Deepness/GeoDeep keys), ``flags`` or ``file``."""

    @property
    def properties(self) -> dict[str, Any]:
        return self.item.setdefault("properties", {})

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.properties.get("mlm:input", [])

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.properties.get("mlm:output", [])

    def band_names(self) -> list[str]:
        out: list[str] = []
        for inp in self.inputs:
            out.extend(b if isinstance(b, str) else b["name"] for b in inp.get("bands", []))
        return out

    def common_names(self) -> dict[str, str]:
        """Band name -> ``eo:common_name`` from the item's STAC 1.1 ``bands``."""
        bands = list(self.properties.get("bands", []))
        for asset in self.item.get("assets", {}).values():
            bands.extend(asset.get("bands", []))
        return {b["name"]: b["eo:common_name"] for b in bands if "name" in b and b.get("eo:common_name")}

    def to_params(self) -> CardParams:
        return card_params(self)

    def to_json(self) -> str:
        return json.dumps(self.item, indent=2)


@dataclass
class CardParams:
    """What a card means to tilecast: ``ModelSpec.create`` keywords plus the runtime wrappers it asks for."""

    params: dict[str, Any]
    scaling: dict[str, list[Scaling | None]] = field(default_factory=dict)
    channel_axis: dict[str, int] = field(default_factory=dict)
    argmax: dict[str, int] = field(default_factory=dict)
    bands: list[str] = field(default_factory=list)
    common_names: dict[str, str] = field(default_factory=dict)
    gsd_tolerance: float = 0.01


# --------------------------------------------------------------------------------------------------------- build


def build_card(
    *,
    name: str,
    bands: Sequence[str],
    input_tile_size: Sequence[int],
    input_overlap_size: Sequence[int] = (0, 0),
    overlap_mode: str = "per_edge",
    output_tile_size: Sequence[int] | None = None,
    layout: str = "NCHW",
    input_names: Sequence[str] | None = None,
    input_dtype: Any = "float32",
    scaling: Sequence[Scaling | None] | None = None,
    common_names: Mapping[str, str] | None = None,
    output_bands: Sequence[OutputBand] = (),
    output_names: Sequence[str] | None = None,
    argmax: Mapping[str, int] | None = None,
    tasks: Sequence[str] = ("semantic-segmentation",),
    architecture: str = "unknown",
    framework: str | None = None,
    artifact: str = "onnx",
    model_href: str | None = None,
    crs: str | None = None,
    resolution: Sequence[float] | None = None,
    gsd_tolerance: float = 0.01,
    fix_input_proj: bool = False,
    resampling: str = "bilinear",
    fill_value: float = 0,
    nodata: float | None = None,
    blend: str = "crop",
    padding: str = "zero",
    batch_size: int | None = None,
    description: str | None = None,
) -> Card:
    """A card from plain parameters (what ``tilecast card`` collects from its flags)."""
    tile = _xy(input_tile_size)
    overlap = _xy(input_overlap_size)
    if overlap_mode == "per_edge":
        padded = (tile[0] + 2 * overlap[0], tile[1] + 2 * overlap[1])
    else:
        padded = (tile[0] + overlap[0], tile[1] + overlap[1])
    out_tile = _xy(output_tile_size) if output_tile_size is not None else tile
    dtype = str(parse_dtype(input_dtype, "input dtype"))
    bands = list(bands)
    if scaling is not None and len(scaling) not in (1, len(bands)):
        raise SpecError(f"{len(scaling)} value scalings for {len(bands)} bands; give one per band, or one for all")
    mlm_inputs = []
    if layout == "pixels":  # tabular models: one (pixels, bands) row per pixel
        mlm_inputs.append(_mlm_input((input_names or ["input"])[0], bands, [-1, len(bands)], ["batch", "channel"],
                                     dtype, scaling))
    elif layout == "bands":
        names = list(input_names or bands)
        for i, b in enumerate(bands):
            sc = None if scaling is None else scaling[0 if len(scaling) == 1 else i]
            mlm_inputs.append(_mlm_input(names[i], [b], [-1, padded[1], padded[0], 1], _DIM_ORDER["bands"], dtype,
                                         None if sc is None else [sc]))
    else:
        c = len(bands)
        shape = [-1, c, padded[1], padded[0]] if layout == "NCHW" else [-1, padded[1], padded[0], c]
        mlm_inputs.append(_mlm_input((input_names or ["input"])[0], bands, shape, _DIM_ORDER[layout], dtype,
                                     scaling))
    argmax = dict(argmax or {})
    mlm_outputs = []
    extra_outputs: dict[str, Any] = {}
    for i, band in enumerate(output_bands):
        depth = -1 if band.dimensions else 1
        if layout == "pixels":
            result = {"shape": [-1, depth] if band.dimensions else [-1], "data_type": str(band.dtype),
                      "dim_order": ["batch", "channel"] if band.dimensions else ["batch"]}
        else:
            result = {"shape": [-1, depth, out_tile[1], out_tile[0]], "data_type": str(band.dtype),
                      "dim_order": ["batch", "channel", "height", "width"]}
        out: dict[str, Any] = {"name": band.name, "tasks": list(tasks), "result": result}
        if band.classes:
            colors = dict(band.colors or ())
            out["classification:classes"] = [
                {"value": v, "name": _slug(n), "description": n,
                 **({"color_hint": "{:02X}{:02X}{:02X}".format(*tuple(colors[v][:3]))} if v in colors else {})}
                for v, n in band.classes
            ]
        mlm_outputs.append(out)
        extra: dict[str, Any] = {}
        if band.dimensions:
            extra["dimensions"] = band.dimensions
        if output_names and i < len(output_names) and output_names[i] != band.name:
            extra["source"] = output_names[i]
        if band.name in argmax:
            extra["argmax"] = argmax[band.name]
        if extra:
            extra_outputs[band.name] = extra
    framework, artifact_type, media = _framework(artifact, framework)
    props: dict[str, Any] = {
        "datetime": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mlm:name": name,
        "mlm:architecture": architecture,
        "mlm:tasks": list(tasks),
        "mlm:framework": framework,
        "mlm:input": mlm_inputs,
        "mlm:output": mlm_outputs,
        "tilecast:tile_size": list(tile),
        "tilecast:overlap": list(overlap),
        "tilecast:overlap_mode": overlap_mode,
        "tilecast:output_tile_size": list(out_tile),
        "tilecast:layout": layout,
        "tilecast:fix_input_proj": bool(fix_input_proj),
        "tilecast:gsd_tolerance": float(gsd_tolerance),
        "tilecast:resampling": resampling,
        "tilecast:fill_value": float(fill_value),
        "tilecast:blend": blend,
        "tilecast:padding": padding,
    }
    if description:
        props["description"] = description
    if batch_size:
        props["mlm:batch_size_suggestion"] = int(batch_size)
    if crs:
        props["tilecast:crs"] = str(crs)
    if resolution is not None:
        props["tilecast:gsd"] = [float(r) for r in _xyf(resolution)]
    if nodata is not None:
        props["tilecast:nodata"] = _json_number(nodata)
    if extra_outputs:
        props["tilecast:outputs"] = extra_outputs
    common = dict(common_names or {})
    band_objects = [{"name": b, **({"eo:common_name": common[b]} if b in common else {})} for b in bands]
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [MLM_SCHEMA] + ([CLASSIFICATION_SCHEMA] if any(b.classes for b in output_bands) else [])
        + ([EO_SCHEMA] if common else []),
        "id": name,
        "geometry": None,
        "properties": props,
        "links": [],
        "assets": {
            "model": {
                "href": model_href or name,
                "type": media,
                "roles": ["mlm:model"],
                "mlm:artifact_type": artifact_type,
                "bands": band_objects,
            }
        },
    }
    return Card(item, source="flags")


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


def _framework(artifact: str, framework: str | None) -> tuple[str, str, str]:
    if artifact not in _ARTIFACTS:
        raise SpecError(f"unknown model artifact {artifact!r}; one of {sorted(_ARTIFACTS)}")
    artifact_type, media, fw = _ARTIFACTS[artifact]
    return framework or fw, artifact_type, media


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in str(text)) or "class"


def _json_number(v: float) -> float | str:
    return "nan" if isinstance(v, float) and np.isnan(v) else v


def _xy(v: Any) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return t[0], t[0]
    if len(t) != 2:
        raise SpecError(f"size {v!r}: give one number or [width, height]")
    return t  # type: ignore[return-value]


def _xyf(v: Any) -> tuple[float, float]:
    if isinstance(v, (int, float, np.number)):
        return float(v), float(v)
    t = tuple(float(x) for x in v)
    return (t[0], t[0]) if len(t) == 1 else (t[0], t[1])


# --------------------------------------------------------------------------------------------------------- read


def read_card(model_path: str | os.PathLike, metadata: Mapping[str, str] | None = None,
              signature: Signature | None = None) -> Card | None:
    """The card for a model: the sidecar, else the one embedded in ONNX metadata, else Deepness/GeoDeep keys."""
    side = card_path(model_path)
    if side.is_file():
        try:
            item = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model card {side} is not valid JSON ({exc}); fix it or rewrite it with "
                                 "`tilecast card`") from None
        return Card(_check_item(item, str(side)), "sidecar")
    metadata = metadata or {}
    if ONNX_KEY in metadata:
        try:
            item = json.loads(metadata[ONNX_KEY])
        except ValueError as exc:
            raise ModelLoadError(f"the model card embedded in {model_path} ({ONNX_KEY!r}) is not valid JSON "
                                 f"({exc}); rewrite it with `tilecast card`") from None
        return Card(_check_item(item, f"{model_path} metadata"), "embedded")
    if any(k in metadata for k in DEEPNESS_KEYS):
        return card_from_deepness(metadata, signature, name=Path(model_path).stem)
    return None


def _check_item(item: Any, where: str) -> dict[str, Any]:
    if not isinstance(item, dict) or not isinstance(item.get("properties"), dict) \
            or "mlm:input" not in item["properties"]:
        raise ModelLoadError(f"{where} is not a STAC MLM item (no properties.mlm:input); write one with "
                             "`tilecast card MODEL --bands ... --tile ...`")
    return item


def write_card(card: Card, model_path: str | os.PathLike, *, embed: bool | None = None,
               overwrite: bool = True) -> Path:
    """Write the sidecar (atomically) and, for ONNX models, embed the card in ``metadata_props``.

    ``embed`` None embeds when the model is an ``.onnx`` file and the ``onnx`` package is installed.
    """
    side = card_path(model_path)
    if side.exists() and not overwrite:
        from .errors import OutputExistsError

        raise OutputExistsError(f"{side} exists; pass overwrite=True (--overwrite) to replace it")
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(card.to_json() + "\n")
    os.replace(tmp, side)
    fmt = _embeddable(model_path)
    if embed is None:
        embed = fmt == "torch" or (fmt == "onnx" and _importable("onnx"))
    if embed:
        if fmt is None:
            raise SpecError("only ONNX, TorchScript and torch.export models can embed their card; the sidecar JSON "
                            "was written")
        if fmt == "onnx":
            embed_onnx(card, model_path)
        else:
            from .loading import detect_format
            from .runtimes.torch import embed_card

            embed_card(model_path, json.dumps(card.item, separators=(",", ":")), detect_format(model_path))
    return side


def _embeddable(model_path: str | os.PathLike) -> str | None:
    name = str(model_path).lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".pt", ".pt2", ".pth", ".torchscript", ".jit")) and Path(model_path).is_file():
        return "torch"
    return None


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def embed_onnx(card: Card, model_path: str | os.PathLike) -> None:
    """Store the card in the ONNX model's ``metadata_props`` (rewritten atomically)."""
    from ._extras import require

    onnx = require("onnx", "card")
    try:
        model = onnx.load(str(model_path))
    except Exception as exc:
        raise ModelLoadError(f"cannot read ONNX model {model_path} to embed the card: {exc}") from None
    props = {p.key: p.value for p in model.metadata_props}
    props[ONNX_KEY] = json.dumps(card.item, separators=(",", ":"))
    onnx.helper.set_model_props(model, props)
    tmp = Path(str(model_path) + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, model_path)


# ------------------------------------------------------------------------------------------------ card -> params


def card_params(card: Card) -> CardParams:
    """Turn a card into ``ModelSpec.create`` keywords and the scaling / argmax wrappers it asks for."""
    p = card.properties
    inputs = card.inputs
    if not inputs:
        raise SpecError("the model card has no mlm:input; add one with `tilecast card --bands ...`")
    layout = p.get("tilecast:layout") or _layout_from_dim_order(inputs)
    tile = p.get("tilecast:tile_size")
    overlap = p.get("tilecast:overlap", [0, 0])
    mode = p.get("tilecast:overlap_mode", "per_edge")
    if tile is None:  # derive from the MLM input shape
        tile = _tile_from_shape(inputs[0], overlap, mode)
    params: dict[str, Any] = {
        "input_overlap_size": tuple(_xy(overlap)),
        "overlap_mode": mode,
    }
    if tile is not None:
        params["input_tile_size"] = tuple(_xy(tile))
    if p.get("tilecast:output_tile_size") is not None and (tile is None or _xy(p["tilecast:output_tile_size"])
                                                           != _xy(tile)):
        # Only a rescaling model needs it; an output tile equal to the input tile follows a --tile override.
        params["output_tile_size"] = tuple(_xy(p["tilecast:output_tile_size"]))
    params["layout"] = layout
    for key, name in (("tilecast:crs", "crs"), ("tilecast:fix_input_proj", "fix_input_proj"),
                      ("tilecast:resampling", "resampling"), ("tilecast:fill_value", "fill_value"),
                      ("tilecast:blend", "blend"), ("tilecast:padding", "padding")):
        if p.get(key) is not None:
            params[name] = p[key]
    if p.get("tilecast:gsd") is not None:
        params["resolution"] = tuple(_xyf(p["tilecast:gsd"]))
    if p.get("tilecast:nodata") is not None:
        nd = p["tilecast:nodata"]
        params["nodata"] = float("nan") if nd == "nan" else float(nd)
    if p.get("mlm:batch_size_suggestion"):
        params["batch_size"] = int(p["mlm:batch_size_suggestion"])
    bands = card.band_names()
    if bands:
        params["bands"] = bands
    extras = p.get("tilecast:outputs", {})
    output_bands = {}
    argmax = {}
    for out in card.outputs:
        name = out["name"]
        extra = extras.get(name, {})
        dtype = out.get("result", {}).get("data_type", "float32")
        classes = out.get("classification:classes")
        spec: dict[str, Any] = {"type": dtype, "dimensions": int(extra.get("dimensions", 0))}
        if classes:
            ordered = sorted(classes, key=lambda c: c["value"])
            spec["classes"] = {int(c["value"]): c.get("description") or c.get("title") or c["name"] for c in ordered}
            if all(c.get("color_hint") for c in ordered):
                spec["colors"] = {int(c["value"]): tuple(int(c["color_hint"][i:i + 2], 16) for i in (0, 2, 4))
                                  for c in ordered}
        output_bands[name] = spec
        if "argmax" in extra:
            argmax[extra.get("source", name)] = int(extra["argmax"])
    if output_bands:
        params["output_bands"] = output_bands
    if layout == "bands":
        params["input_shapes"] = {inp["name"]: [len(inp.get("bands", []))] for inp in inputs
                                  if len(inp.get("bands", [])) > 1}
    scaling: dict[str, list[Scaling | None]] = {}
    axis: dict[str, int] = {}
    for inp in inputs:
        vs = inp.get("value_scaling")
        if vs:
            scaling[inp["name"]] = [None if s is None or s.get("type") is None else Scaling.from_mlm(s) for s in vs]
            dims = inp.get("input", {}).get("dim_order", [])
            axis[inp["name"]] = dims.index("channel") if "channel" in dims else -1
    return CardParams(params, scaling, axis, argmax, bands, card.common_names(),
                      float(p.get("tilecast:gsd_tolerance", 0.01)))


def _layout_from_dim_order(inputs: list[dict[str, Any]]) -> str:
    if len(inputs) > 1:
        return "bands"
    dims = inputs[0].get("input", {}).get("dim_order", [])
    if len(dims) == 2:
        return "pixels"
    if dims[:2] == ["batch", "channel"] or dims[:2] == ["batch", "bands"]:
        return "NCHW"
    return "NHWC"


def _tile_from_shape(inp: dict[str, Any], overlap: Any, mode: str) -> tuple[int, int] | None:
    shape, dims = inp.get("input", {}).get("shape", []), inp.get("input", {}).get("dim_order", [])
    if "height" not in dims or "width" not in dims:
        return None
    h, w = shape[dims.index("height")], shape[dims.index("width")]
    if h is None or w is None or h <= 0 or w <= 0:
        return None
    ox, oy = _xy(overlap)
    k = 2 if mode == "per_edge" else 1
    return int(w) - k * ox, int(h) - k * oy


# ----------------------------------------------------------------------------------------------- Deepness/GeoDeep


def _meta_value(text: str) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text


def card_from_deepness(metadata: Mapping[str, str], signature: Signature | None, name: str = "model") -> Card:
    """A card from the ONNX ``metadata_props`` that Deepness (and GeoDeep, which reuses them) define.

    Deepness feeds RGB(A) uint8 tiles as ``NCHW`` float32 after ``x / 255`` and, when given,
    ``(x - standardization_mean) / standardization_std``; that is one MLM z-score per band with mean and std
    multiplied by 255. ``resolution`` is in cm/px, ``tiles_overlap`` in percent of the tile, ``class_names`` a JSON
    object ``{"0": "background", ...}``. Segmentors return class scores, reduced here with ``argmax``.
    """
    meta = {k: _meta_value(v) for k, v in metadata.items()}
    model_type = str(meta.get("model_type", "Segmentor"))
    inp = signature.inputs[0] if signature and signature.inputs else TensorSpec("input", None, None)
    shape = inp.shape or (None, 3, None, None)
    channels = shape[1] if len(shape) == 4 and shape[1] is not None else 3
    size = meta.get("tiles_size")
    if size is None and len(shape) == 4 and shape[2] is not None:
        size = shape[2]
    if size is None:
        raise SpecError(f"Deepness/GeoDeep model {name}: no tiles_size in its metadata and the input {inp.describe()}"
                        " has no fixed size; pass input_tile_size (--tile)")
    size = int(size)
    pct = float(meta.get("tiles_overlap", 0) or 0)
    per_edge = round(size * pct / 100.0 / 2)
    tile = size - 2 * per_edge
    mean = meta.get("standardization_mean")
    std = meta.get("standardization_std")
    mean = [float(m) for m in (mean if isinstance(mean, list) else [mean or 0.0] * channels)]
    std = [float(s) for s in (std if isinstance(std, list) else [std or 1.0] * channels)]
    if len(mean) < channels or len(std) < channels:
        raise SpecError(f"Deepness/GeoDeep model {name}: standardization_mean/std have {len(mean)}/{len(std)} values "
                        f"for {channels} input channels")
    scaling = [Scaling("z-score", mean=255.0 * m, stddev=255.0 * s) for m, s in zip(mean, std, strict=False)]
    scaling = scaling[:channels]
    rgb = ["red", "green", "blue", "alpha"]
    bands = rgb[:channels] if channels <= 4 else [f"b{i + 1}" for i in range(channels)]
    classes_raw = meta.get("class_names")
    classes: tuple[tuple[int, str], ...] | None = None
    if isinstance(classes_raw, dict):
        classes = tuple(sorted((int(k), str(v)) for k, v in classes_raw.items()))
    elif isinstance(classes_raw, list):
        classes = tuple(enumerate(str(c) for c in classes_raw))
    is_seg = model_type.lower() in ("segmentor", "segmentation")
    out_name = signature.outputs[0].name if signature and signature.outputs else "output"
    if is_seg:
        outputs = [OutputBand("class", np.dtype("uint8"), 0, classes or None)]
        argmax = {"class": 1}
        tasks: tuple[str, ...] = ("semantic-segmentation",)
    else:
        outputs = [OutputBand(out_name, np.dtype("float32"), 1)]
        argmax = {}
        tasks = {"regressor": ("regression",), "detector": ("object-detection",),
                 "detection": ("object-detection",), "superresolution": ("super-resolution",),
                 "recognition": ("similarity-search",)}.get(model_type.lower(), ("regression",))
    res = meta.get("resolution")
    gsd = float(res) / 100.0 if res not in (None, "") else None
    card = build_card(
        name=name, bands=bands, input_tile_size=(tile, tile), input_overlap_size=(per_edge, per_edge),
        layout="NCHW", input_names=[inp.name], input_dtype="float32", scaling=scaling,
        common_names={b: b for b in bands if b in rgb[:3]}, output_bands=outputs, output_names=[out_name],
        argmax=argmax, tasks=tasks, architecture=model_type, artifact="onnx", resolution=gsd,
        fix_input_proj=gsd is not None, description=f"converted from Deepness/GeoDeep metadata ({model_type})",
    )
    card.properties["tilecast:source_metadata"] = {k: metadata[k] for k in metadata if k != ONNX_KEY}
    card.source = "deepness"
    if not is_seg:
        warnings.warn(
            f"Deepness/GeoDeep model_type {model_type!r}: tilecast writes the raw output tensor; "
            "detections are not decoded into boxes", TilecastWarning, stacklevel=2,
        )
    return card


# -------------------------------------------------------------------------------------------------- validation


def validate_card(card: Card | Mapping[str, Any]) -> list[str]:
    """Check a card against the STAC item schema (bundled with pystac) and the MLM extension (stac-model).

    Returns the problems (empty when valid); raises nothing, so callers decide how strict to be.
    """
    item = card.item if isinstance(card, Card) else dict(card)
    problems: list[str] = []
    try:
        import pystac

        pystac.Item.from_dict(json.loads(json.dumps(item)), migrate=False)
    except ImportError:
        problems.append("pystac is not installed: STAC structure not checked")
    except Exception as exc:
        problems.append(f"not a STAC item: {exc}")
    problems.extend(_core_schema_problems(item))
    problems.extend(_mlm_problems(item))
    p = item.get("properties", {})
    if MLM_SCHEMA not in item.get("stac_extensions", []):
        problems.append(f"stac_extensions must list the MLM schema {MLM_SCHEMA}")
    for inp in p.get("mlm:input", []):
        vs, bands = inp.get("value_scaling"), inp.get("bands", [])
        if vs and bands and len(vs) not in (1, len(bands)):
            problems.append(f"input {inp.get('name')!r}: value_scaling has {len(vs)} entries for {len(bands)} bands")
    return problems


def _core_schema_problems(item: Mapping[str, Any]) -> list[str]:
    """The STAC 1.1 item schema that pystac ships, checked offline with jsonschema."""
    try:
        from jsonschema import Draft7Validator
        from pystac.validation.local_validator import _read_schema, get_local_schema_cache
        from referencing import Registry, Resource
    except ImportError:
        return []
    registry = Registry().with_resources(
        [(k, Resource.from_contents(v)) for k, v in get_local_schema_cache().items()]
    )
    validator = Draft7Validator(_read_schema("stac-spec/v1.1.0/item.json"), registry=registry)
    return [f"STAC item schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '/'}"
            for e in validator.iter_errors(json.loads(json.dumps(item)))]


def mlm_json_schema() -> dict[str, Any] | None:
    """The MLM item-properties JSON schema, generated from stac-model's models (no network needed)."""
    try:
        from stac_model.schema import MLModelProperties
    except ImportError:
        return None
    schema = MLModelProperties.model_json_schema(by_alias=True)
    # stac-model wraps pystac's Classification, whose generated schema wants a "properties" key; put the MLM /
    # classification extension's Class Object in its place.
    schema.get("$defs", {})["MLMClassification"] = {
        "type": "object",
        "required": ["value"],
        "properties": {"value": {"type": "integer"}, "name": {"type": "string"}, "description": {"type": "string"},
                       "title": {"type": "string"}, "color_hint": {"type": "string", "pattern": "^([0-9A-Fa-f]{6})$"},
                       "nodata": {"type": "boolean"}},
        "anyOf": [{"required": ["name"]}, {"required": ["description"]}],
    }
    return schema


def _mlm_problems(item: Mapping[str, Any]) -> list[str]:
    props = {k: v for k, v in item.get("properties", {}).items() if k.startswith("mlm:")}
    try:
        from pydantic import ValidationError
        from stac_model.schema import MLModelProperties
    except ImportError:
        return _mlm_required(props)
    problems = _mlm_required(props)
    try:
        MLModelProperties.model_validate(props)
    except ValidationError as exc:
        for err in exc.errors():
            problems.append(f"MLM: {err['msg']} at {'/'.join(map(str, err['loc']))}")
    schema = mlm_json_schema()
    if schema is not None:
        from jsonschema import Draft202012Validator

        for e in Draft202012Validator(schema).iter_errors(json.loads(json.dumps(props))):
            problems.append(f"MLM JSON schema: {e.message} at {'/'.join(map(str, e.absolute_path)) or '/'}")
    return sorted(set(problems), key=problems.index)


def _mlm_required(props: Mapping[str, Any]) -> list[str]:
    need = ("mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output")
    return [f"MLM: missing required field {k}" for k in need if k not in props]


# ----------------------------------------------------------------------------------------------- consistency


def check_card_signature(card: Card, signature: Signature) -> None:
    """Raise :class:`SpecError` where the card contradicts what the model itself declares."""
    names = signature.input_names
    cp = card.to_params()
    for inp in card.inputs:
        name = inp["name"]
        t = signature.input(name)
        if t is None:
            if len(card.inputs) == 1 and len(names) == 1:
                t = signature.inputs[0]
                raise SpecError(
                    f"the model card names the input {name!r} but the model's input is {t.name!r}; rewrite the card "
                    f"(`tilecast card MODEL --input-name {t.name}`) or fix mlm:input[0].name"
                )
            if names:
                raise SpecError(
                    f"the model card names the input {name!r} but the model has inputs {names}; rewrite the card "
                    "with `tilecast card`"
                )
            continue
        shape, dims = inp.get("input", {}).get("shape", []), inp.get("input", {}).get("dim_order", [])
        if t.shape is not None and len(shape) == len(t.shape):
            for d, (want, have) in enumerate(zip(shape, t.shape, strict=True)):
                if have is not None and want not in (-1, None) and int(want) != int(have) and d > 0:
                    dim = dims[d] if d < len(dims) else str(d)
                    raise SpecError(
                        f"the model card says input {name!r} has {dim} = {want} (shape {shape}), but the model "
                        f"declares {t.describe()}; fix the card's --tile/--overlap/--bands to match the model"
                    )
        elif t.shape is not None and shape and len(shape) != len(t.shape):
            raise SpecError(f"the model card gives input {name!r} rank {len(shape)} ({shape}) but the model declares "
                            f"{t.describe()}; rewrite the card with `tilecast card`")
        if "channel" in dims and t.shape is not None and len(t.shape) == len(dims):
            c = t.shape[dims.index("channel")]
            nb = len(inp.get("bands", []))
            if c is not None and nb and c != nb and cp.params.get("layout") != "bands":
                raise SpecError(
                    f"the model card lists {nb} bands {inp.get('bands')} for input {name!r}, but the model takes "
                    f"{c} channels; fix --bands in the card"
                )


def match_bands(
    card_bands: Sequence[str],
    raster_bands: Sequence[str],
    common_names: Mapping[str, str] | None = None,
    raster_common: Sequence[str | None] | None = None,
) -> list[int]:
    """1-based raster band indexes for the card's bands, matched by description, then by ``eo:common_name``.

    A raster without band descriptions (``b1``, ``b2``...) that has exactly the card's band count is taken in order,
    as Earth Engine does. Anything else that does not match raises :class:`BandMismatchError` listing both sides.
    """
    common_names = dict(common_names or {})
    raster_common = list(raster_common or [None] * len(raster_bands))
    lower = [b.lower() for b in raster_bands]
    rc_lower = [(c or "").lower() for c in raster_common]
    anonymous = all(b == f"b{i + 1}" for i, b in enumerate(raster_bands))
    if anonymous and len(raster_bands) == len(card_bands):
        return list(range(1, len(card_bands) + 1))
    out, missing = [], []
    for band in card_bands:
        cn = (common_names.get(band) or "").lower()
        idx = None
        for cand in (band, band.lower()):
            if cand in raster_bands:
                idx = list(raster_bands).index(cand)
                break
            if cand in lower:
                idx = lower.index(cand)
                break
        if idx is None and cn:
            if cn in lower:
                idx = lower.index(cn)
            elif cn in rc_lower:
                idx = rc_lower.index(cn)
        if idx is None and band.lower() in rc_lower:
            idx = rc_lower.index(band.lower())
        if idx is None:
            missing.append(band + (f" ({common_names[band]})" if band in common_names else ""))
        else:
            out.append(idx + 1)
    if missing:
        have = [f"{b}" + (f" ({c})" if c else "") for b, c in zip(raster_bands, raster_common, strict=True)]
        raise BandMismatchError(
            f"the model needs bands {[b + (f' ({common_names[b]})' if b in common_names else '') for b in card_bands]}"
            f" but the raster has {have}; missing {missing}. Name the raster bands (band descriptions or "
            "eo:common_name tags), or map them explicitly with --bands 3,2,1"
        )
    return out
