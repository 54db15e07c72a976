"""What a card means to tilecast: ``ModelSpec.create`` keywords plus the runtime wrappers it asks for, and back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..plan import TileGeometry, infer_layout, parse_resolution, parse_size
from ..runtimes.base import TensorSpec
from ..runtimes.scaled import Scaling
from ..spec import parse_output_bands

if TYPE_CHECKING:
    from .schema import Card

__all__ = ["CardParams", "card_params", "describe_card", "keywords_from_card"]


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


_SCALARS = (("tilecast:crs", "crs"), ("tilecast:fix_input_proj", "fix_input_proj"),
            ("tilecast:resampling", "resampling"), ("tilecast:fill_value", "fill_value"),
            ("tilecast:blend", "blend"), ("tilecast:padding", "padding"))


def card_params(card: Card) -> CardParams:
    """Turn a card into ``ModelSpec.create`` keywords and the scaling / argmax wrappers it asks for."""
    p = card.properties
    inputs = card.inputs
    if not inputs:
        raise SpecError("the model card has no mlm:input; add one with `tilecast card --bands ...`")
    _require_names(card)
    params = _geometry_params(p, inputs)
    for key, name in _SCALARS:
        if p.get(key) is not None:
            params[name] = p[key]
    if params.get("fill_value") == "nan":  # JSON has no NaN: written as the string, like tilecast:nodata
        params["fill_value"] = float("nan")
    if p.get("tilecast:gsd") is not None:
        params["resolution"] = parse_resolution(p["tilecast:gsd"], "tilecast:gsd")
    if p.get("tilecast:nodata") is not None:
        nd = p["tilecast:nodata"]
        params["nodata"] = float("nan") if nd == "nan" else float(nd)
    if p.get("mlm:batch_size_suggestion"):
        params["batch_size"] = int(p["mlm:batch_size_suggestion"])
    if p.get("tilecast:tile_multiple"):  # the stride `--tile auto` keeps the padded tile a multiple of
        params["tile_multiple"] = int(p["tilecast:tile_multiple"])
    bands = card.band_names()
    if bands:
        params["bands"] = bands
    output_bands, argmax = _output_params(card)
    if output_bands:
        params["output_bands"] = output_bands
    if params["layout"] == "bands":
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


def _require_names(card: Card) -> None:
    """Every input and output is addressed by its ``name``: a card without one is refused here, naming the field,
    rather than failing later with a bare KeyError."""
    for key, entries in (("mlm:input", card.inputs), ("mlm:output", card.outputs)):
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
                raise SpecError(f"the model card's {key}[{i}].name is missing; give each {key} entry the name of "
                                "the model tensor it describes (or rewrite the card with `tilecast card`)")


def _geometry_params(p: dict[str, Any], inputs: list[dict[str, Any]]) -> dict[str, Any]:
    first = inputs[0].get("input", {})
    layout = p.get("tilecast:layout") or infer_layout([TensorSpec(i["name"], None, None) for i in inputs],
                                                      dim_order=first.get("dim_order", []))
    tile = p.get("tilecast:tile_size")
    overlap = p.get("tilecast:overlap", [0, 0])
    mode = p.get("tilecast:overlap_mode", "per_edge")
    if tile is None:  # derive from the MLM input shape
        tile = _tile_from_shape(first, overlap, mode)
    params: dict[str, Any] = {"input_overlap_size": tuple(parse_size(overlap, "tilecast:overlap")),
                              "overlap_mode": mode}
    if tile is not None:
        params["input_tile_size"] = tuple(parse_size(tile, "tilecast:tile_size"))
    out = p.get("tilecast:output_tile_size")
    if out is not None and (tile is None or parse_size(out) != parse_size(tile)):
        # Only a rescaling model needs it; an output tile equal to the input tile follows a --tile override.
        params["output_tile_size"] = tuple(parse_size(out, "tilecast:output_tile_size"))
    params["layout"] = layout
    return params


def _tile_from_shape(inp: dict[str, Any], overlap: Any, mode: str) -> tuple[int, int] | None:
    shape, dims = inp.get("shape", []), inp.get("dim_order", [])
    if "height" not in dims or "width" not in dims:
        return None
    h, w = (shape[dims.index(k)] for k in ("height", "width"))
    t = TensorSpec("input", tuple(None if v is None or v <= 0 else int(v) for v in (-1, -1, h, w)), None)
    try:
        return tuple(TileGeometry.from_signature([t], "NCHW", overlap, None, mode).tile)  # type: ignore[return-value]
    except SpecError:
        return None


def _output_params(card: Card) -> tuple[dict[str, Any], dict[str, int]]:
    extras = card.properties.get("tilecast:outputs", {})
    output_bands: dict[str, Any] = {}
    argmax: dict[str, int] = {}
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
                spec["colors"] = {int(c["value"]): _hint_rgb(c["color_hint"], name) for c in ordered}
        output_bands[name] = spec
        if "argmax" in extra:
            argmax[extra.get("source", name)] = int(extra["argmax"])
    return output_bands, argmax


def _hint_rgb(hint: Any, output: str) -> tuple[int, int, int]:
    """A class's ``color_hint``: MLM's ``RRGGBB``; a leading ``#`` (as CSS and many cards write it) is accepted."""
    text = str(hint).strip().removeprefix("#")
    try:
        if len(text) != 6:
            raise ValueError(text)
        return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
    except ValueError:
        raise SpecError(f"the model card's output {output!r} has color_hint {hint!r}; write a hex RRGGBB colour "
                        "such as 00FF00") from None


def keywords_from_card(old: Card) -> dict[str, Any]:
    """:func:`~tilecast.card.build_card` keywords that reproduce an existing card (so flags only change what they
    name)."""
    cp = old.to_params()
    p = cp.params
    kw: dict[str, Any] = {
        "name": old.properties.get("mlm:name"),
        "architecture": old.properties.get("mlm:architecture", "unknown"),
        "tasks": old.properties.get("mlm:tasks", ["semantic-segmentation"]),
        "bands": cp.bands,
        "common_names": cp.common_names,
        "input_tile_size": p.get("input_tile_size"),
        "input_overlap_size": p.get("input_overlap_size", (0, 0)),
        "overlap_mode": p.get("overlap_mode", "per_edge"),
        # An output tile equal to the old input tile follows a new --tile.
        "output_tile_size": p.get("output_tile_size") if p.get("output_tile_size") != p.get("input_tile_size")
        else None,
        "layout": p.get("layout"),
        "input_names": [i["name"] for i in old.inputs],
        "input_dtype": old.inputs[0].get("input", {}).get("data_type", "float32"),
        "gsd_tolerance": cp.gsd_tolerance,
        "argmax": {},
    }
    for k in ("crs", "resolution", "fix_input_proj", "resampling", "fill_value", "nodata", "blend", "padding",
              "batch_size"):
        if k in p:
            kw[k] = p[k]
    if cp.scaling and p.get("layout") == "bands":  # one input per band, each with its own scaling
        kw["scaling"] = [(cp.scaling.get(i["name"]) or [None])[0] for i in old.inputs]
    elif cp.scaling:
        kw["scaling"] = next(iter(cp.scaling.values()))
    if "output_bands" in p:
        kw["output_bands"] = list(parse_output_bands(p["output_bands"]))
    extras = old.properties.get("tilecast:outputs", {})
    names = []
    for b in kw.get("output_bands", []):
        e = extras.get(b.name, {})
        names.append(e.get("source", b.name))
        if "argmax" in e:
            kw["argmax"][b.name] = e["argmax"]
    kw["output_names"] = names or None
    return kw


def describe_card(card: Card) -> dict[str, Any]:
    """A flat summary of a card for ``tilecast info``."""
    p = card.properties
    cp = card.to_params()
    out: dict[str, Any] = {
        "card": card.source,
        "name": p.get("mlm:name"),
        "tasks": ", ".join(p.get("mlm:tasks", [])),
        "layout": cp.params.get("layout"),
        "tile": cp.params.get("input_tile_size"),
        "overlap": f"{cp.params.get('input_overlap_size')} ({cp.params.get('overlap_mode', 'per_edge')})",
        "output tile": cp.params.get("output_tile_size", cp.params.get("input_tile_size")),
        "blend": cp.params.get("blend", "crop"),
    }
    if "resolution" in cp.params or "crs" in cp.params:
        out["gsd policy"] = (f"{cp.params.get('crs') or 'image CRS'} @ {cp.params.get('resolution')} "
                             f"(tolerance {cp.gsd_tolerance:.1%}, "
                             f"{'warp' if cp.params.get('fix_input_proj') else 'refuse'} otherwise)")
    out["nodata"] = f"fill {cp.params.get('fill_value', 0)}, output nodata {cp.params.get('nodata', 'default')}"
    rows = []
    for inp in card.inputs:
        vs = inp.get("value_scaling") or []
        for i, b in enumerate(inp.get("bands", [])):
            name = b if isinstance(b, str) else b["name"]
            sc = vs[0 if len(vs) == 1 else i] if vs and (len(vs) == 1 or i < len(vs)) else None
            rows.append({"input": inp["name"], "band": name, "common_name": cp.common_names.get(name, ""),
                         "scaling": _scaling_text(sc), "dtype": inp.get("input", {}).get("data_type", "")})
    out["bands"] = rows
    outs = []
    extras = p.get("tilecast:outputs", {})
    for o in card.outputs:
        classes = o.get("classification:classes") or []
        outs.append({"name": o["name"], "dtype": o.get("result", {}).get("data_type", ""),
                     "dimensions": extras.get(o["name"], {}).get("dimensions", 0),
                     "classes": ", ".join(f"{c['value']}={c.get('description') or c['name']}" for c in classes)})
    out["card outputs"] = outs
    return out


def _scaling_text(sc: dict[str, Any] | None) -> str:
    if not sc or sc.get("type") is None:
        return ""
    args = [f"{sc[k]:g}" for k in ("value", "mean", "stddev", "minimum", "maximum") if sc.get(k) is not None]
    return ":".join([sc["type"], *args])
