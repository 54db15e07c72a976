"""``tilecast card MODEL``: write or update a model card, then prove it by running one synthetic tile."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..card import (
    build_card,
    detect_format,
    embeddable,
    keywords_from_card,
    open_runtime,
    read_card,
    require_card_extra,
    runtime_metadata,
    validate_card,
    will_embed,
    write_card,
)
from ..card.probe import check_with_tile, receptive_radius, record_result_shapes
from ..errors import ModelLoadError, SpecError, TilecastWarning
from ..plan import TileGeometry, infer_layout
from ..runtimes.scaled import parse_scaling
from ..spec import parse_colors, parse_output_bands
from .options import SIZE, csv_list, reports_errors
from .predict import parse_classes

__all__ = ["build_from_options", "card", "check_with_tile", "receptive_radius"]


@click.command(short_help="Write or update a model card (STAC MLM) and check it.")
@click.argument("model_path", metavar="MODEL")
@click.option("--bands", help="Input bands in model order, comma-separated; NAME or NAME=COMMON (e.g. B04=red).")
@click.option("--tile", type=SIZE, help="Core tile W[,H] (Earth Engine's inputTileSize).")
@click.option("--overlap", type=SIZE, help="Overlap W[,H] per edge (inputOverlapSize).")
@click.option("--overlap-mode", type=click.Choice(["per_edge", "total"]), help="How --overlap is counted.")
@click.option("--output-tile", type=SIZE, help="Output tile W[,H] (outputTileSize).")
@click.option("--layout", type=click.Choice(["NCHW", "NHWC", "bands", "pixels"]),
              help="How bands feed the model (pixels: a tabular model fed (pixels, bands) rows).")
@click.option("--input-name", help="The model input the bands feed (default: the model's first input).")
@click.option("--input-dtype", help="dtype the model takes after scaling (default: the model's, or float32).")
@click.option("--scaling", "scalings", multiple=True, metavar="TYPE:ARGS",
              help="Value scaling, once for all bands or once per band in order: scale:V, offset:V, "
                   "z-score:MEAN:STD, min-max:MIN:MAX, clip:MIN:MAX, none.")
@click.option("--output-band", "output_bands", multiple=True, metavar="NAME:DTYPE[:DIMS]",
              help="Declare an output band (repeatable), e.g. landcover:uint8 or probs:float32:1.")
@click.option("--classes", help="Class names of the first output band: 1=water,2=forest (or water,forest for 0, 1).")
@click.option("--colors", help="Class colours as hex in class order (e.g. 00ff00,0000ff), VALUE:#RRGGBB pairs or a "
              "palette (tab10, set1, paired); opaque only (a card's color_hint has no alpha).")
@click.option("--argmax/--no-argmax", default=None,
              help="Reduce the first output's class scores to a class index (channel axis 1 for NCHW, else last).")
@click.option("--crs", help="The CRS the model expects (Earth Engine's proj).")
@click.option("--gsd", type=float, nargs=2, metavar="X Y", help="Pixel size the model was trained at, in CRS units.")
@click.option("--gsd-tolerance", type=float, help="Relative GSD difference still accepted (default 0.01).")
@click.option("--fix-input-proj/--no-fix-input-proj", default=None, help="Warp inputs whose grid differs.")
@click.option("--fill-value", type=float, help="Value sent for masked input pixels.")
@click.option("--nodata", type=float, help="Output nodata.")
@click.option("--blend", type=click.Choice(["crop", "cosine", "hann"]), help="Recommended merge of overlapping tiles.")
@click.option("--padding", type=click.Choice(["zero", "reflect"]), help="Padding beyond the raster edge.")
@click.option("--name", help="Model name (mlm:name).")
@click.option("--architecture", help="Architecture (mlm:architecture), e.g. U-Net.")
@click.option("--task", "tasks", multiple=True, help="MLM task (repeatable), e.g. semantic-segmentation.")
@click.option("--embed/--no-embed", default=None,
              help="Also embed the card in the model (ONNX metadata_props, Torch archive extra file; default yes).")
@click.option("--check/--no-check", default=True, show_default=True,
              help="Run one synthetic tile and measure the receptive field.")
@click.option("--overwrite", is_flag=True,
              help="Replace MODEL's card instead of updating it: flags you leave out are not kept (for a card "
                   "tilecast cannot read, or to start afresh).")
@click.option("--print", "show", is_flag=True, help="Print the card JSON.")
@reports_errors
def card(model_path: str, show: bool, check: bool, embed: bool | None, **opts: Any) -> None:
    """Write MODEL's card (sidecar MODEL.json; embedded too for ONNX and Torch archives unless --no-embed).

    Editing the card beside a model is this command's purpose, so an existing card is updated in place without
    --overwrite: it is read first, flags you leave out keep their value, and fields tilecast does not set (licence,
    links, hyperparameters...) are kept. Files are replaced atomically. --overwrite replaces the card instead.

    \b
    Example:
      tilecast card unet.onnx --bands B02=blue,B03=green,B04=red --tile 224 --overlap 16 \\
          --scaling z-score:1200:300 --output-band landcover:uint8 --classes water,forest,urban --argmax
    """
    require_card_extra()
    fmt = detect_format(model_path)
    runtime = open_runtime(model_path, fmt)
    try:
        new = build_from_options(model_path, fmt, runtime, opts)
        problems = validate_card(new)
        if problems:
            raise SpecError("the card does not validate: " + "; ".join(problems[:5]))
        if check:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TilecastWarning)  # printed below as lines
                report = check_with_tile(model_path, new)
            for line in report["lines"]:
                click.echo(line, err=True)
            record_result_shapes(new, report["outputs"])
    finally:
        runtime.close()
    embedded = embeddable(model_path) is not None and will_embed(model_path, embed)
    side = write_card(new, model_path, embed=embed, overwrite=True)  # the old card was read and merged above
    click.echo(f"wrote {side}" + (" (and embedded it in the model)" if embedded else ""), err=True)
    if show:
        click.echo(json.dumps(new.item, indent=2))


_FLAGS = (("tile", "input_tile_size"), ("overlap", "input_overlap_size"), ("overlap_mode", "overlap_mode"),
          ("output_tile", "output_tile_size"), ("layout", "layout"), ("crs", "crs"),
          ("gsd_tolerance", "gsd_tolerance"), ("fix_input_proj", "fix_input_proj"), ("fill_value", "fill_value"),
          ("nodata", "nodata"), ("blend", "blend"), ("padding", "padding"), ("name", "name"),
          ("architecture", "architecture"), ("input_dtype", "input_dtype"))


def build_from_options(model_path: str, fmt: str, runtime: Any, opts: dict[str, Any]) -> Any:
    """Merge the flags over the existing card (sidecar/embedded/Deepness), then build the new card."""
    sig = runtime.signature
    old = None if opts.get("overwrite") else _old_card(model_path, runtime)
    kw: dict[str, Any] = keywords_from_card(old) if old is not None else {}
    if opts.get("bands"):
        kw["bands"], kw["common_names"] = _parse_bands(opts["bands"])
    if not kw.get("bands"):
        raise SpecError("the card needs the input bands: pass --bands B04=red,B03=green,B02=blue (model order)")
    kw.update({key: opts[flag] for flag, key in _FLAGS if opts.get(flag) is not None})
    if opts.get("gsd"):
        kw["resolution"] = tuple(opts["gsd"])
    if opts.get("tasks"):
        kw["tasks"] = list(opts["tasks"])
    kw.setdefault("name", Path(str(model_path).rstrip("/")).stem)
    kw["artifact"] = fmt
    kw["model_href"] = Path(str(model_path).rstrip("/")).name
    kw.setdefault("input_overlap_size", (0, 0))
    if kw.get("layout") is None:
        kw["layout"] = infer_layout(sig.inputs, len(kw["bands"]), fallback="NCHW")
    if opts.get("input_name"):
        kw["input_names"] = [opts["input_name"]]
    elif kw["layout"] != "bands" and sig.inputs:
        kw["input_names"] = [sig.inputs[0].name]
    if kw.get("input_tile_size") is None:
        kw["input_tile_size"] = tuple(TileGeometry.from_signature(
            sig.inputs, kw["layout"], kw["input_overlap_size"], None, kw.get("overlap_mode", "per_edge")).tile)
    if "input_dtype" not in kw:
        kw["input_dtype"] = _numeric(sig.inputs[0].dtype if sig.inputs else None)
    if opts.get("scalings"):
        sc = [None if s.lower() == "none" else parse_scaling(s) for s in opts["scalings"]]
        if len(sc) not in (1, len(kw["bands"])):
            raise SpecError(f"{len(sc)} --scaling for {len(kw['bands'])} bands; give one for all, or one per band")
        kw["scaling"] = sc
    _output_options(kw, sig, opts)
    new = build_card(**kw)
    if old is not None:
        _keep_unset_fields(old, new)
    return new


def _old_card(model_path: str, runtime: Any) -> Any:
    """The card to update (tested here: one that cannot be updated names ``--overwrite``)."""
    try:
        old = read_card(model_path, runtime_metadata(runtime), runtime.signature)
        if old is not None:
            keywords_from_card(old)
    except (ModelLoadError, SpecError) as exc:
        if "--overwrite" in str(exc):
            raise
        raise type(exc)(f"{exc}; or replace the card: tilecast card {model_path} --overwrite --bands ...") from None
    return old


_MANAGED_EXTENSIONS = ("/mlm/", "/classification/", "/eo/")


def _keep_unset_fields(old: Any, new: Any) -> None:
    """An update keeps what the old card says and tilecast does not set: properties, links, other assets, other
    STAC extensions (``tilecast:outputs`` is rebuilt, so ``--no-argmax`` still removes an argmax)."""
    for key, value in old.properties.items():
        if key not in new.properties and key != "tilecast:outputs":
            new.properties[key] = value
    for key, value in old.item.items():
        if key not in new.item or (key in ("links", "geometry", "bbox") and not new.item.get(key)):
            new.item[key] = value
    extensions = [e for e in old.item.get("stac_extensions") or [] if isinstance(e, str)
                  and not any(m in e for m in _MANAGED_EXTENSIONS) and e not in new.item["stac_extensions"]]
    new.item["stac_extensions"] += extensions
    assets = old.item.get("assets")
    for name, asset in (assets if isinstance(assets, dict) else {}).items():
        target = new.item["assets"].setdefault(name, {})
        if isinstance(asset, dict):
            for key, value in asset.items():
                target.setdefault(key, value)


def _numeric(dtype: Any) -> str:
    return str(dtype) if dtype is not None and dtype.kind in "biuf" else "float32"


def _parse_bands(text: str) -> tuple[list[str], dict[str, str]]:
    """``B04=red,B03=green``: band names in model order, with their ``eo:common_name``."""
    names, common = [], {}
    for item in csv_list(text) or []:
        name, _, cn = item.partition("=")
        names.append(name)
        if cn:
            common[name] = cn
    return names, common


def _output_options(kw: dict[str, Any], sig: Any, opts: dict[str, Any]) -> None:
    """``--output-band``, ``--classes``, ``--colors`` and ``--argmax`` over what the old card (or the model) says."""
    if opts.get("output_bands"):
        kw["output_bands"] = list(parse_output_bands(list(opts["output_bands"])))
        kw["output_names"] = None
    outs = list(kw.get("output_bands") or [])
    if not outs and sig.outputs:
        outs = list(parse_output_bands({t.name: _numeric(t.dtype) for t in sig.outputs[:1]}))
    if opts.get("classes") or opts.get("colors"):
        if not outs:
            raise SpecError("--classes needs an --output-band to attach to")
        classes = outs[0].classes
        if opts.get("classes"):
            parsed = parse_classes(opts["classes"])
            classes = tuple(sorted(parsed.items() if isinstance(parsed, dict) else enumerate(parsed)))
        colors = None
        if opts.get("colors"):
            if not classes:
                raise SpecError("--colors needs classes to colour (a card keeps one colour per class): pass "
                                "--classes too, e.g. --classes water,forest --colors 0000ff,00aa00")
            parsed_colors = parse_colors(opts["colors"], [v for v, _ in classes])
            unknown = sorted(set(parsed_colors) - {v for v, _ in classes})
            if unknown:
                raise SpecError(f"--colors gives colours for {unknown}, which are not class values "
                                f"({[v for v, _ in classes]}); colour the classes of --classes")
            colors = tuple((v, c[:3] if c[3] == 255 else c) for v, c in sorted(parsed_colors.items()))
        outs[0] = replace(outs[0], classes=classes, colors=colors or outs[0].colors)
    kw["output_bands"] = outs
    argmax = dict(kw.get("argmax") or {})
    if opts.get("argmax") is not None and outs:
        if opts["argmax"]:
            argmax[outs[0].name] = 1 if kw["layout"] == "NCHW" else -1
        else:
            argmax.pop(outs[0].name, None)
    kw["argmax"] = argmax
    if argmax and not kw.get("output_names") and sig.outputs:
        kw["output_names"] = [sig.outputs[0].name]
